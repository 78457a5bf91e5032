"""OpenAPI documents of the farm's APIs, each served at ``/plugins/farm/openapi/NAME.json``."""

from __future__ import annotations

from typing import Any

from twisted.web import resource
from twisted.web.server import Request

from buildbot_farm.web._json import ApiError, json_response

# The one error shape, as every document declares it (components/schemas/Error).
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what was wrong and what to do"},
        "fields": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "the problem with each named input, when inputs were wrong",
        },
    },
}


def error_response(description: str) -> dict[str, Any]:
    """An OpenAPI response object whose body is the farm's error shape."""
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An OpenAPI response object with a JSON body of ``schema``."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


class OpenAPIResource(resource.Resource):
    """Serves a fixed OpenAPI document as JSON."""

    isLeaf = True

    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__()
        self._document = document

    def render_GET(self, request: Request) -> bytes:
        """Return the document."""
        return json_response(request, self._document)


class OpenAPIDocuments(resource.Resource):
    """``/plugins/farm/openapi/NAME.json``: the document of each API, by name.

    ``GET /plugins/farm/openapi/`` lists the names served.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.documents: dict[str, dict[str, Any]] = {}

    def add(self, name: str, document: dict[str, Any]) -> None:
        """Serve ``document`` as ``NAME.json`` (a second add of a name replaces it)."""
        self.documents[name] = document

    def render_GET(self, request: Request) -> bytes:
        """The document named by the path, or the list of names for the directory itself."""
        segments = [s.decode("utf-8", errors="replace") for s in request.postpath or []]
        if not [s for s in segments if s]:
            return json_response(request, {"documents": sorted(f"{n}.json" for n in
                                                               self.documents)})
        name = "/".join(segments)
        document = self.documents.get(name.removesuffix(".json"))
        if document is None or not name.endswith(".json"):
            return ApiError(404, f"no OpenAPI document {name!r}; there are "
                            f"{', '.join(sorted(self.documents))} (each NAME.json)").answer(request)
        return json_response(request, document)
