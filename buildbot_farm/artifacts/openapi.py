"""The OpenAPI 3 document of the artifact repository's JSON parts
(``/plugins/farm/openapi/artifacts.json``).

The repository is also a WebDAV server (``PROPFIND``, ``MKCOL``, ``OPTIONS``: see
``docs/artifacts.md``); OpenAPI cannot say that a path parameter spans several segments, so
``{path}`` here is one segment and deeper paths are answered the same way.
"""

from __future__ import annotations

from typing import Any

from buildbot_farm.web import ERROR_SCHEMA, error_response, json_content

_PATH = {"name": "path", "in": "path", "required": True,
         "description": "a file's path in the repository (deeper paths work the same way)",
         "schema": {"type": "string"}}
_LISTING = {
    "type": "object",
    "required": ["path", "entries"],
    "properties": {
        "path": {"type": "string"},
        "entries": {"type": "array", "items": {
            "type": "object",
            "required": ["name", "type", "size", "sha256", "modified", "url"],
            "properties": {
                "name": {"type": "string"},
                "type": {"type": "string", "enum": ["file", "collection"]},
                "size": {"type": "integer", "nullable": True},
                "sha256": {"type": "string", "nullable": True},
                "modified": {"type": "string"},
                "url": {"type": "string"},
            },
        }},
    },
}
_STORED = {
    "type": "object",
    "required": ["path", "url", "size", "sha256"],
    "properties": {
        "path": {"type": "string"}, "url": {"type": "string"},
        "size": {"type": "integer"}, "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    },
}
_WRITE_ERRORS = {
    "400": error_response("An unsafe path, or a bad X-Checksum-Sha256"),
    "401": error_response("No upload token, or one that is not (or no longer) valid"),
    "403": error_response("The token's build may not write here"),
    "404": error_response("No artifact at this path"),
    "405": error_response("A collection, not a file"),
    "409": error_response("A parent is a file, or the content's digest is not the one sent"),
    "413": error_response("Larger than the repository's upload limit"),
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "buildbot_farm artifact repository",
        "version": "1",
        "description": "Public downloads; uploads with a build's token (HTTP Basic "
                       "build-ID:TOKEN). Every error is {\"error\": MESSAGE}.",
    },
    "servers": [{"url": "/plugins/farm/artifacts"}],
    "paths": {
        "/": {
            "get": {
                "summary": "The repository's top collection (JSON with format=json)",
                "parameters": [{"name": "format", "in": "query",
                                "schema": {"type": "string", "enum": ["json"]}}],
                "responses": {
                    "200": {"description": "The listing",
                            "content": {"application/json": {"schema": _LISTING},
                                        "text/html": {"schema": {"type": "string"}}}},
                },
            },
        },
        "/{path}": {
            "parameters": [_PATH],
            "get": {
                "summary": "A file (Range, ETag = its sha256), or a collection's listing",
                "parameters": [{"name": "format", "in": "query",
                                "schema": {"type": "string", "enum": ["json"]}}],
                "responses": {
                    "200": {"description": "The file, or the listing of a collection",
                            "content": {"application/octet-stream": {"schema": {
                                "type": "string", "format": "binary"}},
                                "application/json": {"schema": _LISTING}}},
                    "301": {"description": "A collection asked for without its final /"},
                    "304": {"description": "Not modified"},
                    "400": error_response("An unsafe path"),
                    "404": error_response("No artifact at this path"),
                    "503": error_response("The storage (S3) is unreachable"),
                },
            },
            "put": {
                "summary": "Store a file (streamed; its sha256 computed on the way)",
                "security": [{"buildToken": []}],
                "requestBody": {"content": {"application/octet-stream": {"schema": {
                    "type": "string", "format": "binary"}}}},
                "responses": {
                    "201": json_content(_STORED, "Stored"),
                    "204": {"description": "Replaced a file of the same build"},
                    **_WRITE_ERRORS,
                },
            },
            "delete": {
                "summary": "Delete a file or an empty collection of the token's build",
                "security": [{"buildToken": []}],
                "responses": {"204": {"description": "Deleted"}, **_WRITE_ERRORS},
            },
        },
    },
    "components": {
        "schemas": {"Error": ERROR_SCHEMA},
        "securitySchemes": {"buildToken": {"type": "http", "scheme": "basic"}},
    },
}
