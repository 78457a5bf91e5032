"""The repository on a port of its own: ``ArtifactRepository(port=...)``.

Served from the root of the port (``http://HOST:PORT/bin/...``), with the same resource as
in Buildbot's web server, but PUT bodies stream straight into the storage as they arrive
and are refused before they are sent (see :mod:`.upload`); downloads are the same.
"""

from __future__ import annotations

from typing import Any

from twisted.web import server

from buildbot_farm.artifacts.api import ArtifactResource
from buildbot_farm.artifacts.repository import Repository
from buildbot_farm.artifacts.upload import StreamingRequest


class ArtifactSite(server.Site):
    """A twisted.web site serving ``repository`` at its root, streaming uploads."""

    def __init__(self, repository: Repository, reactor: Any) -> None:
        super().__init__(ArtifactResource(repository), reactor=reactor)
        self.requestFactory = StreamingRequest
        self.repository = repository


def listen(repository: Repository, reactor: Any, port: int, interface: str) -> Any:
    """Serve ``repository`` on ``interface``:``port`` (0: any free port); the listening port."""
    return reactor.listenTCP(port, ArtifactSite(repository, reactor), interface=interface)
