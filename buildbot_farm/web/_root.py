"""The root resource of the farm's HTTP API, into which each capability mounts its own."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Callable

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


@dataclass(frozen=True)
class _Mount:
    child: resource.Resource
    openapi: str | None
    active: Callable[[], bool]


class FarmRoot(resource.Resource):
    """``/plugins/farm/``: a directory of the resources the capabilities mount.

    ``GET`` on the root itself (``/plugins/farm`` or ``/plugins/farm/``) answers the index:
    each active mount's name, absolute path and OpenAPI document's path (or null). A mount
    named as another's ``openapi`` is that document, and not listed on its own. Unknown
    paths answer a JSON 404 that lists what is mounted.
    """

    def __init__(self) -> None:
        super().__init__()
        self._mounted: dict[str, _Mount] = {}

    def mount(
        self,
        name: str,
        child: resource.Resource,
        openapi: str | None = None,
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        """Serve ``child`` at ``/plugins/farm/<name>``; a second mount of a name replaces it.

        ``openapi`` is the path of ``child``'s OpenAPI document relative to this root, if it
        has one (a mount's name, or a path such as ``../openapi/ondemand.json``).
        ``active`` says whether the index lists it now (what is served stays routable):
        for an API that answers only once its capability is configured.
        """
        if not name or "/" in name:
            raise ValueError(f"mount name {name!r} must be one non-empty path segment")
        self._mounted[name] = _Mount(child, openapi, active)

    def unmount(self, name: str) -> None:
        """Stop serving ``/plugins/farm/<name>``."""
        self._mounted.pop(name, None)

    def getChild(self, path: bytes, request: Request) -> resource.Resource:
        """Route to the mounted resource for ``path``; the root itself for ``/``; else a 404."""
        if not path:
            return self
        mounted = self._mounted.get(path.decode(errors="replace"))
        if mounted is None:
            return _NotFound(sorted(self._mounted))
        return mounted.child

    def index(self, base: str) -> list[dict[str, Any]]:
        """The active mounts, each as ``{"name", "path", "openapi"}``.

        ``base`` is the root's own path, ending in ``/``; the paths start with it.
        """
        documents = {m.openapi for m in self._mounted.values() if m.openapi is not None}
        return [
            {
                "name": name,
                "path": base + name,
                "openapi": None if mounted.openapi is None else (
                    posixpath.normpath(base + mounted.openapi)),
            }
            for name, mounted in sorted(self._mounted.items())
            if name not in documents and mounted.active()
        ]

    def render_GET(self, request: Request) -> bytes:
        """The index of what is mounted (``GET /plugins/farm/``)."""
        segments = [segment.decode(errors="replace") for segment in request.prepath or []]
        base = "/".join(["", *(segment for segment in segments if segment), ""])
        return json_response(request, {"apis": self.index(base)})
