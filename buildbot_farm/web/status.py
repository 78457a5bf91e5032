"""``GET /plugins/farm/status``: is the farm service up, on which database, with which masters."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.python import log
from twisted.web import resource, server
from twisted.web.server import Request

from buildbot_farm.db import Database, DatabaseError
from buildbot_farm.masters import MasterTable
from buildbot_farm.web._json import json_error, json_response

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "buildbot_farm status", "version": "1"},
    "paths": {
        "/": {
            "get": {
                "summary": "The APIs mounted here, with the paths of their OpenAPI documents",
                "responses": {
                    "200": {
                        "description": "What this farm service serves, as configured now",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Index"}}
                        },
                    },
                },
            }
        },
        "/status": {
            "get": {
                "summary": "The farm service's database and the masters that use it",
                "responses": {
                    "200": {
                        "description": "The service is up and its database answers",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Status"}}
                        },
                    },
                    "503": {
                        "description": "The farm database cannot be reached",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                        },
                    },
                },
            }
        }
    },
    "components": {
        "schemas": {
            "Status": {
                "type": "object",
                "required": ["backend", "schema_version", "masters", "version"],
                "properties": {
                    "backend": {"type": "string", "enum": ["sqlite", "postgresql"]},
                    "schema_version": {"type": "integer"},
                    "version": {"type": "string"},
                    "masters": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "started_at", "heartbeat_at", "version"],
                            "properties": {
                                "name": {"type": "string"},
                                "started_at": {"type": "number"},
                                "heartbeat_at": {"type": "number"},
                                "version": {"type": "string"},
                            },
                        },
                    },
                },
            },
            "Index": {
                "type": "object",
                "required": ["apis"],
                "properties": {
                    "apis": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "path", "openapi"],
                            "properties": {
                                "name": {"type": "string"},
                                "path": {"type": "string"},
                                "openapi": {"type": "string", "nullable": True},
                            },
                        },
                    },
                },
            },
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            },
        }
    },
}


class StatusResource(resource.Resource):
    """Answers the service's status as JSON, or 503 with the reason when the database is down.

    ``database`` is called per request, so the resource follows a reconfigured service.
    """

    isLeaf = True

    def __init__(self, database: Callable[[], Database | None], version: str) -> None:
        super().__init__()
        self._database = database
        self._version = version

    def render_GET(self, request: Request) -> int:
        """Start the lookup; the response is written when the database answers."""
        d = defer.ensureDeferred(self._status())
        d.addCallback(lambda body: json_response(request, body))
        d.addErrback(self._unavailable, request)
        d.addCallback(request.write)
        d.addBoth(lambda _: request.finish())
        return server.NOT_DONE_YET

    async def _status(self) -> dict[str, Any]:
        database = self._database()
        if database is None:
            raise DatabaseError("the farm service is not running")
        version = await database.fetchone("SELECT MAX(version) AS v FROM farm_schema_version")
        masters = await MasterTable(database).all()
        return {
            "backend": database.dialect.name,
            "schema_version": int(version["v"]) if version else 0,
            "version": self._version,
            "masters": masters,
        }

    def _unavailable(self, failure: Any, request: Request) -> bytes:
        if failure.check(DatabaseError):
            return json_error(request, 503, str(failure.value))
        log.err(failure, "farm status failed")
        return json_error(request, 500, "the farm status failed; the master's log has the cause")


class OpenAPIResource(resource.Resource):
    """Serves a fixed OpenAPI document as JSON."""

    isLeaf = True

    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__()
        self._document = document

    def render_GET(self, request: Request) -> bytes:
        """Return the document."""
        return json_response(request, self._document)
