"""``GET /plugins/farm/status``: is the farm service up, on which database, with which masters."""

from __future__ import annotations

from typing import Any, Callable

from twisted.web import resource
from twisted.web.server import Request

from buildbot_farm.db import Database, current_version
from buildbot_farm.masters import MasterTable
from buildbot_farm.web._json import ApiError
from buildbot_farm.web._openapi import ERROR_SCHEMA
from buildbot_farm.web._router import Routes

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "buildbot_farm status", "version": "1"},
    "servers": [{"url": "/plugins/farm"}],
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
                "summary": "The farm service's database, the masters that use it, and the "
                           "state of each Docker host the buildlet pools spread over",
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
                    "docker_hosts": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/DockerHost"},
                    },
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
            "DockerHost": {
                "type": "object",
                "required": ["pool", "host", "url", "up", "reason", "down_since", "buildlets",
                             "max_count"],
                "properties": {
                    "pool": {"type": "string"},
                    "host": {"type": "string"},
                    "url": {"type": "string"},
                    "up": {"type": "boolean"},
                    "reason": {"type": "string", "nullable": True},
                    "down_since": {"type": "number", "nullable": True},
                    "buildlets": {"type": "integer"},
                    "max_count": {"type": "integer"},
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
            "Error": ERROR_SCHEMA,
        }
    },
}


class StatusAPI:
    """Answers the service's status as JSON, or 503 with the reason when the database is down.

    ``database`` is called per request, so the API follows a reconfigured service; so is
    ``docker_hosts``, which gives the state of each Docker host of the running coordinator's
    pools (up, or down and why). Mount :meth:`resource` as ``status``.
    """

    routes: Routes[StatusAPI] = Routes("status")

    def __init__(
        self, database: Callable[[], Database | None], version: str,
        docker_hosts: Callable[[], list[dict[str, Any]]] = list,
    ) -> None:
        self._database = database
        self._version = version
        self._docker_hosts = docker_hosts

    def resource(self) -> resource.Resource:
        """The resource to mount."""
        return self.routes.resource(self, under="status")

    @routes.route("GET", "status")
    async def status(self, request: Request) -> dict[str, Any]:
        """The database's backend and schema, this plugin's version, the masters using it."""
        database = self._database()
        if database is None:
            raise ApiError(503, "the farm service is not running")
        version = await current_version(database)
        masters = await MasterTable(database).all()
        return {
            "backend": database.dialect.name,
            "schema_version": version,
            "version": self._version,
            "masters": masters,
            "docker_hosts": self._docker_hosts(),
        }
