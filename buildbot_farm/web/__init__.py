"""The farm's HTTP face: resources mounted at ``/plugins/farm/`` in Buildbot's web server.

Every farm API is built with the same kit: :class:`Routes` on the API's class, handlers
that raise :class:`ApiError`, :func:`respond` to answer from async code, and an OpenAPI
document served by :class:`OpenAPIDocuments`.
"""

from __future__ import annotations

from buildbot_farm.web._json import ApiError, json_error, json_response
from buildbot_farm.web._openapi import (
    ERROR_SCHEMA,
    OpenAPIDocuments,
    OpenAPIResource,
    error_response,
    json_content,
)
from buildbot_farm.web._root import FarmRoot
from buildbot_farm.web._router import Routes, respond

__all__ = [
    "ERROR_SCHEMA",
    "ApiError",
    "FarmRoot",
    "OpenAPIDocuments",
    "OpenAPIResource",
    "Routes",
    "error_response",
    "json_content",
    "json_error",
    "json_response",
    "respond",
]
