"""The OpenAPI 3 document of the coordinator's API (``/plugins/farm/openapi/coordinator.json``).

The buildlet proxy (any request carrying ``X-Buildlet-Proxy: NAME``) relays the agent's own
protocol and is described in ``docs/leases.md``, not here.
"""

from __future__ import annotations

from typing import Any

from buildbot_farm.web import ERROR_SCHEMA, error_response, json_content

_LEASE = {
    "type": "object",
    "required": ["Name", "Type", "Created", "Expires"],
    "properties": {
        "Name": {"type": "string"},
        "Type": {"type": "string"},
        "Created": {"type": "string", "format": "date-time"},
        "Expires": {"type": "string", "format": "date-time", "nullable": True},
    },
}
_LOST = {
    "type": "object",
    "required": ["Name", "Type", "Lost", "Reason"],
    "properties": {
        "Name": {"type": "string"},
        "Type": {"type": "string"},
        "Lost": {"type": "string", "format": "date-time"},
        "Reason": {"type": "string"},
    },
}
_UNAUTHORISED = error_response("No or wrong HTTP Basic credentials (user-NAME and its key)")


def _form(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
        "type": "object", "properties": properties, "required": required}}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "buildbot_farm coordinator",
        "version": "1",
        "description": "Go's gomote protocol: lease, list and register buildlets. Every error "
                       "is {\"error\": MESSAGE, \"fields\": {FIELD: PROBLEM}}.",
    },
    "servers": [{"url": "/plugins/farm/coordinator"}],
    "security": [{"basic": []}],
    "paths": {
        "/buildlet/create": {
            "post": {
                "summary": "Lease a buildlet of a type; wait=SECONDS waits in line for one",
                "requestBody": _form({
                    "type": {"type": "string", "minLength": 1},
                    "wait": {"type": "number", "minimum": 0},
                }, ["type"]),
                "responses": {
                    "200": {
                        "description": "The lease; with wait=, JSON lines: {\"status\": "
                                       "{\"ahead\": N}}..., then {\"buildlet\": LEASE} or "
                                       "{\"error\", \"code\"}",
                        "content": {
                            "application/json": {"schema": _LEASE},
                            "application/x-ndjson": {"schema": {"type": "string"}},
                        },
                    },
                    "400": error_response("No type=, a bad wait=, or an unknown type"),
                    "401": _UNAUTHORISED,
                    "503": error_response("The pool is full; Retry-After says when to retry"),
                },
            },
        },
        "/buildlet/list": {
            "get": {
                "summary": "The caller's buildlets",
                "responses": {
                    "200": json_content({"type": "array", "items": _LEASE}, "The leases"),
                    "401": _UNAUTHORISED,
                },
            },
        },
        "/buildlet/lost": {
            "get": {
                "summary": "The caller's buildlets lost with their hosts (the latest), and why",
                "responses": {
                    "200": json_content({"type": "array", "items": _LOST}, "The lost leases"),
                    "401": _UNAUTHORISED,
                },
            },
        },
        "/buildlet/register": {
            "post": {
                "summary": "A reverse buildlet's host joins the pool of a type",
                "requestBody": _form({
                    "type": {"type": "string", "minLength": 1},
                    "url": {"type": "string", "minLength": 1},
                    "secret": {"type": "string", "minLength": 1},
                }, ["type", "url", "secret"]),
                "responses": {
                    "200": json_content(_LEASE, "The registered buildlet"),
                    "400": error_response("A missing field, or a type that is not reverse"),
                    "401": _UNAUTHORISED,
                },
            },
        },
    },
    "components": {
        "schemas": {"Error": ERROR_SCHEMA},
        "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
    },
}
