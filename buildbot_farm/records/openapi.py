"""The OpenAPI 3 document of the records API (served at ``/plugins/farm/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

from buildbot_farm.records.model import MAX_BINARIES, RESULTS


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    what = {
        400: "A bad field or query parameter; `fields` names each one",
        401: "No API key, or one that is not configured",
        403: "The key may not do this (deleting needs an admin key)",
        404: "No such record, name or path",
        405: "The method is not allowed on this path",
        409: "A record with this name and version exists; records are never replaced",
        410: "The record was deleted (a tombstone says who, when and why)",
        413: "The body is larger than 1 MiB",
        503: "The farm database (or the signing key) is not available",
    }
    return {str(code): _json("Error", what[code]) for code in codes}


_NAME = {
    "name": "name", "in": "path", "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$"},
}
_VERSION = {**_NAME, "name": "version"}
_PAGING = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
    {"name": "deleted", "in": "query", "schema": {"type": "string", "enum": ["true", "false"]}},
]
_FILTERS = [
    {"name": "name", "in": "query", "schema": {"type": "string"}},
    {"name": "since", "in": "query", "schema": {"type": "number"}},
    {"name": "until", "in": "query", "schema": {"type": "number"}},
    {"name": "commit", "in": "query", "schema": {"type": "string"}},
    {"name": "result", "in": "query", "schema": {"type": "string", "enum": list(RESULTS)}},
]
_SECURED: list[dict[str, list[str]]] = [{"apiKey": []}]
_IMMUTABLE_HEADERS = {
    "ETag": {"schema": {"type": "string"}, "description": "Strong; the record never changes"},
    "Cache-Control": {"schema": {"type": "string"}},
}


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {**_json(schema, description), "headers": _IMMUTABLE_HEADERS}


_BINARY = {
    "type": "object",
    "description": "size and sha256 are null when unknown (then the binary is not attested)",
    "required": ["url"],
    "properties": {
        "url": {"type": "string", "pattern": "^https?://"},
        "size": {"type": "integer", "minimum": 0, "nullable": True},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$", "nullable": True},
        "path": {"type": "string"},
    },
}
_SCALAR = {"nullable": True, "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}
_NEW_RECORD: dict[str, Any] = {
    "type": "object",
    "description": "Our field names or the reference's (Name, Version, TimeStamp, Hostname, ...)",
    "required": ["name", "version", "timestamp"],
    "properties": {
        "name": _NAME["schema"],
        "version": _NAME["schema"],
        "timestamp": {"type": "number", "minimum": 0},
        "result": {"type": "string", "enum": list(RESULTS)},
        "builtOn": {"type": "string"},
        "language": {"type": "string"},
        "sourceUrl": {"type": "string"},
        "buildUrl": {"type": "string"},
        "source": {"type": "object", "nullable": True,
                   "additionalProperties": {"type": "string", "nullable": True}},
        "environment": {"type": "object", "additionalProperties": _SCALAR},
        "binaries": {"type": "array", "maxItems": MAX_BINARIES, "items": _BINARY},
        "byproducts": {"type": "array", "maxItems": MAX_BINARIES, "items": _BINARY},
        "toolchain": {"type": "string"},
    },
}
_REFERENCE: dict[str, Any] = {
    **{
        key: {"type": "string"}
        for key in ("Name", "Version", "Hostname", "Architecture", "SourceUrl", "BinaryUrl",
                    "Language")
    },
    "TimeStamp": {"type": "integer", "minimum": 0, "description": "UNIX seconds"},
    "GoVersion": {"type": "string", "description": "Go records only"},
}
_RECORD = {
    "type": "object",
    "required": ["name", "version", "timestamp", "result", "binaries",
                 *(k for k in _REFERENCE if k != "GoVersion")],
    "properties": {**_NEW_RECORD["properties"], **_REFERENCE, "deleted": {"type": "object"}},
}
_LINK = {
    "Link": {"schema": {"type": "string"},
             "description": 'The next page, when there is one: <URL>; rel="next"'},
}
_VERSIONS = {
    "parameters": [_NAME],
    "get": {
        "summary": "The versions of one name, newest first",
        "parameters": _PAGING,
        "responses": {"200": {**_json("Page", "A page of this name's records"), "headers": _LINK},
                      **_errors(400, 404, 503)},
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "buildbot_farm build records",
        "version": "1",
        "description": "Immutable records of finished builds, and their signed SLSA provenance.",
    },
    "servers": [{"url": "/plugins/farm/api"}],
    "paths": {
        "/builds": {
            "get": {
                "summary": "Records, newest first, a page at a time",
                "parameters": _FILTERS + _PAGING,
                "responses": {"200": {**_json("Page", "A page; the Link header has the next"),
                                      "headers": _LINK},
                              **_errors(400, 503)},
            },
            "post": {
                "summary": "Record a build made outside Buildbot",
                "security": _SECURED,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _NEW_RECORD}},
                },
                "responses": {"201": _ok("Record", "Recorded"),
                              **_errors(400, 401, 403, 409, 413, 503)},
            },
        },
        "/builds/{name}": _VERSIONS,
        "/build/{name}": {**_VERSIONS, "description": "The reference's spelling of /builds/{name}"},
        "/builds/{name}/{version}": {
            "parameters": [_NAME, _VERSION],
            "get": {
                "summary": "One record",
                "responses": {"200": _ok("Record", "The record"),
                              "304": {"description": "Not modified (If-None-Match)"},
                              **_errors(404, 410, 503)},
            },
            "delete": {
                "summary": "Delete a record with a tombstone (admin key, reason required)",
                "security": _SECURED,
                "parameters": [{"name": "reason", "in": "query", "required": True,
                                "schema": {"type": "string", "minLength": 1}}],
                "responses": {"200": _json("Tombstone", "Deleted"),
                              **_errors(400, 401, 403, 404, 410, 503)},
            },
        },
        "/builds/{name}/{version}/provenance": {
            "parameters": [_NAME, _VERSION],
            "get": {
                "summary": "SLSA provenance v1 in an in-toto statement, in a signed DSSE envelope",
                "responses": {"200": _ok("Envelope", "The signed envelope"),
                              "304": {"description": "Not modified (If-None-Match)"},
                              **_errors(404, 409, 410, 503)},
            },
        },
        "/records-chain": {
            "get": {
                "summary": "The hash chain of every record and tombstone, in the order stored",
                "parameters": [
                    {"name": "after", "in": "query", "description": "the last seq seen (0)",
                     "schema": {"type": "integer", "minimum": 0}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
                "responses": {"200": _json("Chain", "A page of entries; `next` is the next page"),
                              **_errors(400, 503)},
            },
        },
    },
    "components": {
        "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Record": _RECORD,
            "Page": {"type": "array", "items": {"$ref": "#/components/schemas/Record"}},
            "Chain": {
                "type": "object",
                "required": ["entries", "next"],
                "properties": {
                    "entries": {"type": "array", "items": {
                        "type": "object",
                        "required": ["seq", "kind", "name", "version", "prevHash", "hash"],
                        "properties": {
                            "seq": {"type": "integer"},
                            "kind": {"type": "string", "enum": ["record", "tombstone"]},
                            "name": {"type": "string"}, "version": {"type": "string"},
                            "prevHash": {"type": "string"}, "hash": {"type": "string"},
                            "record": {"type": "object", "nullable": True},
                            "deleted": {"type": "object", "nullable": True},
                        },
                    }},
                    "next": {"type": "string", "nullable": True},
                },
            },
            "Tombstone": {
                "type": "object",
                "required": ["name", "version", "deletedBy", "deletedAt", "reason"],
                "properties": {
                    "name": {"type": "string"}, "version": {"type": "string"},
                    "deletedBy": {"type": "string"}, "deletedAt": {"type": "number"},
                    "reason": {"type": "string"},
                },
            },
            "Envelope": {
                "type": "object",
                "required": ["payloadType", "payload", "signatures"],
                "properties": {
                    "payloadType": {"type": "string"},
                    "payload": {"type": "string", "format": "byte"},
                    "signatures": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["keyid", "sig"],
                            "properties": {"keyid": {"type": "string"}, "sig": {"type": "string"}},
                        },
                    },
                },
            },
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {"type": "string"},
                    "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        },
    },
}
