"""The ``buildbot.www`` entry point ``farm``: mounts the farm service's API in the web server.

Enable it in master.cfg with ``c['www']['plugins']['farm'] = {}``. The resource finds the
farm service through the master at request time, so it follows reconfigurations.
"""

from __future__ import annotations

from typing import Any

from twisted.web import resource
from twisted.web.server import Request

from buildbot_farm import __version__
from buildbot_farm.lookup import farm_service
from buildbot_farm.names import FARM_SERVICE
from buildbot_farm.web._json import json_error


class _EmptyAsset(resource.Resource):
    """An empty file of one media type."""

    isLeaf = True

    def __init__(self, content_type: bytes) -> None:
        super().__init__()
        self._content_type = content_type

    def render_GET(self, request: Request) -> bytes:
        """The empty body, announced with the media type."""
        request.setHeader(b"content-type", self._content_type)
        return b""


# Buildbot's web UI loads plugins/NAME/scripts.js and styles.css for every www plugin; the
# farm's pages are server-rendered (buildbot_farm.dashboard), so both are empty.
UI_ASSETS: dict[bytes, resource.Resource] = {
    b"scripts.js": _EmptyAsset(b"text/javascript"),
    b"styles.css": _EmptyAsset(b"text/css"),
}


class _ServiceRedirect(resource.Resource):
    """Delegates every request to the running farm service's :class:`FarmRoot`."""

    def __init__(self, master: Any, service_name: str) -> None:
        super().__init__()
        self._master = master
        self._service_name = service_name

    def _root(self) -> resource.Resource | None:
        service = farm_service(self._master, self._service_name)
        return None if service is None else service.web_root

    def getChildWithDefault(self, path: bytes, request: Request) -> resource.Resource:
        """Hand the request to the service's root, or explain that there is no service."""
        if path in UI_ASSETS:
            return UI_ASSETS[path]
        root = self._root()
        if root is None:
            return _NoService(self._service_name)
        return root.getChildWithDefault(path, request)

    def render(self, request: Request) -> bytes:
        """``/plugins/farm`` itself: the service root's index."""
        root = self._root()
        if root is None:
            return _NoService(self._service_name).render(request)
        return root.render(request)


class _NoService(resource.Resource):
    isLeaf = True

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self._service_name = service_name

    def render(self, request: Request) -> bytes:
        return json_error(
            request,
            503,
            f"no farm service named {self._service_name!r} is running on this master: add "
            f"util.FarmService(name={self._service_name!r}) to c['services'] in master.cfg",
        )


class FarmWebPlugin:
    """What Buildbot's web server loads for ``c['www']['plugins']['farm']``.

    The plugin's configuration dict may name the service: ``{'service': 'farm'}``.
    """

    description = "buildbot_farm: the build farm's API"
    version = __version__
    ui = False

    def __init__(self) -> None:
        self.master: Any = None
        self.config: dict[str, Any] = {}
        self.resource: resource.Resource = _NoService(FARM_SERVICE)

    def setMaster(self, master: Any) -> None:
        """Called by Buildbot's web server with the running master."""
        self.master = master

    def setConfiguration(self, config: dict[str, Any] | None) -> None:
        """Called with the plugin's dict from master.cfg; builds the resource."""
        self.config = dict(config or {})
        name = str(self.config.get("service", FARM_SERVICE))
        self.resource = _ServiceRedirect(self.master, name)


farm_plugin = FarmWebPlugin()
