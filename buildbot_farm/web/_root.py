"""The root resource of the farm's HTTP API, into which each capability mounts its own."""

from __future__ import annotations

from twisted.web import resource
from twisted.web.server import Request

from buildbot_farm.web._json import json_error, json_response


class _NotFound(resource.Resource):
    isLeaf = True

    def __init__(self, known: list[str]) -> None:
        super().__init__()
        self._known = known

    def render(self, request: Request) -> bytes:
        return json_error(
            request,
            404,
            f"no farm API at {request.path.decode(errors='replace')}",
            available=self._known,
        )


class FarmRoot(resource.Resource):
    """``/plugins/farm/``: a directory of the resources the capabilities mount.

    Unknown paths answer a JSON 404 that lists what is mounted.
    """

    def __init__(self) -> None:
        super().__init__()
        self._mounted: dict[str, resource.Resource] = {}

    def mount(self, name: str, child: resource.Resource) -> None:
        """Serve ``child`` at ``/plugins/farm/<name>``; a second mount of a name replaces it."""
        if not name or "/" in name:
            raise ValueError(f"mount name {name!r} must be one non-empty path segment")
        self._mounted[name] = child

    def unmount(self, name: str) -> None:
        """Stop serving ``/plugins/farm/<name>``."""
        self._mounted.pop(name, None)

    def getChild(self, path: bytes, request: Request) -> resource.Resource:
        """Route to the mounted resource for ``path``, or a JSON 404."""
        child = self._mounted.get(path.decode(errors="replace"))
        if child is None:
            return _NotFound(sorted(self._mounted))
        return child

    def render_GET(self, request: Request) -> bytes:
        """List what is mounted (``GET /plugins/farm/``)."""
        return json_response(request, {"apis": sorted(self._mounted)})
