"""The OpenAPI 3 document of the on-demand builds API (``/plugins/farm/openapi/ondemand.json``)."""

from __future__ import annotations

from typing import Any

from buildbot_farm.web import ERROR_SCHEMA, error_response, json_content

_KEY = {"name": "key", "in": "path", "required": True,
        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}
_STATUS = {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "retry"]}
_ARTIFACT = {"type": "string", "format": "binary"}
_VALUE = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_SUBMITTED = {
    "type": "object",
    "required": ["key", "status"],
    "properties": {
        "key": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "status": _STATUS,
        "download": {"type": "string"},
        "url": {"type": "string", "nullable": True},
    },
}
_JOB = {
    "type": "object",
    "required": ["key", "status", "scheduler", "attempt", "attempts", "error"],
    "properties": {
        "key": {"type": "string"},
        "status": _STATUS,
        "scheduler": {"type": "string"},
        "attempt": {"type": "integer"},
        "attempts": {"type": "array", "items": {"type": "object"}},
        "error": {"type": "string", "nullable": True},
        "artifact": {
            "type": "object",
            "properties": {
                "url": {"type": "string"}, "path": {"type": "string"},
                "size": {"type": "integer"}, "sha256": {"type": "string"},
                "download": {"type": "string"},
            },
        },
    },
}
_OFF = error_response("On-demand builds are not configured (OnDemandBuilds) on this master")
_DOWNLOADED = {
    "description": "The artifact (or its signature, or the PEM public key)",
    "content": {"application/octet-stream": {"schema": _ARTIFACT},
                "application/x-pem-file": {"schema": {"type": "string"}}},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "buildbot_farm on-demand builds",
        "version": "1",
        "description": "Same parameters, same build key, one build, a cached artifact. Every "
                       "error is {\"error\": MESSAGE, \"fields\": {PARAMETER: PROBLEM}}.",
    },
    "servers": [{"url": "/plugins/farm/api"}],
    "paths": {
        "/build": {
            "post": {
                "summary": "Request a build with these parameter values (or join/serve it)",
                "requestBody": {"content": {"application/json": {"schema": {
                    "type": "object",
                    "properties": {"scheduler": {"type": "string"}},
                    "additionalProperties": _VALUE,
                }}}},
                "responses": {
                    "200": json_content(_SUBMITTED, "Built before: the artifact is ready"),
                    "202": json_content(_SUBMITTED, "Queued or running; poll /build/{key}"),
                    "400": error_response("A bad parameter; `fields` names each one"),
                    "404": error_response("No on-demand scheduler of that name"),
                    "413": error_response("The body is larger than 1 MiB"),
                    "503": _OFF,
                },
            },
        },
        "/build/{key}": {
            "get": {
                "summary": "The job of a build key: status, attempts, artifact",
                "parameters": [_KEY],
                "responses": {
                    "200": json_content(_JOB, "The job"),
                    "404": error_response("No job has this key"),
                },
            },
        },
        "/download/{name}": {
            "get": {
                "summary": "KEY: the artifact; KEY.sig: its Ed25519 signature; public-key.pem",
                "parameters": [{"name": "name", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {
                    "200": _DOWNLOADED,
                    "206": {"description": "A range of the artifact",
                            "content": {"application/octet-stream": {"schema": _ARTIFACT}}},
                    "304": {"description": "Not modified (If-None-Match)"},
                    "404": error_response("No such job, not built yet, or nothing signed"),
                    "410": error_response("The artifact was removed (retention); rebuild it"),
                    "503": error_response("The artifact repository is not reachable"),
                },
            },
        },
        "/compat": {
            "get": {
                "summary": "Request a build and wait for its artifact (query: NAME=VALUE...)",
                "parameters": [{"name": "scheduler", "in": "query",
                                "schema": {"type": "string"}}],
                "responses": {
                    "200": _DOWNLOADED,
                    "400": error_response("A bad parameter; `fields` names each one"),
                    "404": error_response("No on-demand scheduler of that name"),
                    "502": error_response("The build failed for good"),
                    "503": _OFF,
                    "504": error_response("Not built within compat_timeout; `key` to poll"),
                },
            },
        },
    },
    "components": {"schemas": {"Error": ERROR_SCHEMA}},
}
