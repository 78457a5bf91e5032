"""The repository inside FarmService: mounted at ``/plugins/farm/artifacts/`` (and on its own
port with ``port=``), tokens revoked when their build finishes, master-minted tokens for
``token_builders``, and the janitor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.python import log

from buildbot_farm.artifacts import site
from buildbot_farm.artifacts.api import ArtifactResource
from buildbot_farm.artifacts.build_tokens import install_on
from buildbot_farm.artifacts.config import ArtifactRepository
from buildbot_farm.artifacts.repository import Repository, open_repository

if TYPE_CHECKING:
    from buildbot_farm.context import MountingFarmContext

MOUNT = "artifacts"
JANITOR = "artifact-janitor"


class ArtifactsHost:
    """Runs the repository FarmService's settings ask for; ``repository`` is None without one."""

    def __init__(self, farm: MountingFarmContext) -> None:
        self._farm = farm
        self.repository: Repository | None = None
        self._consumer: Any = None
        self._own_port: Any = None
        self._running: tuple[ArtifactRepository, Any] | None = None

    async def configure(self, wanted: ArtifactRepository | None) -> None:
        """Start, replace or stop the repository so it matches ``wanted`` and the database.

        Builders named in ``wanted.token_builders`` get their token-minting build class
        first (ConfigErrors when one names no builder; see ``build_tokens``).
        """
        if wanted is not None and wanted.token_builders:
            await install_on(self._farm.master, wanted.token_builders)
        database = self._farm.database
        if self._running == (wanted, database):
            return
        await self.stop()
        if wanted is None or database is None:
            return
        master = self._farm.master
        public = (master.config.buildbotURL or "http://localhost:8010/") + f"plugins/farm/{MOUNT}/"
        repository = await open_repository(wanted, database, master.reactor, master.name,
                                           public, basedir=master.basedir)
        if wanted.port is not None:  # first: a busy port changes nothing
            self._own_port = site.listen(repository, master.reactor, wanted.port,
                                         wanted.interface)
            if wanted.public_url is None:
                repository.public_url = own_port_url(
                    master.config.buildbotURL, wanted.interface, self._own_port.getHost().port
                )
        self._consumer = await master.mq.startConsuming(
            lambda key, build: defer.ensureDeferred(self._build_finished(build)),
            ("builds", None, "finished"),
        )
        self.repository = repository
        self._running = (wanted, database)
        self._farm.web_root.mount(MOUNT, ArtifactResource(repository),
                                  openapi="openapi/artifacts.json")
        self._farm.add_periodic(JANITOR, wanted.janitor_interval, repository.sweep)
        log.msg(f"farm: artifact repository in {repository.storage.location},"
                f" served at {repository.public_url}")

    async def stop(self) -> None:
        """Unmount the repository and stop revoking and sweeping."""
        if self.repository is None:
            return
        self._farm.web_root.unmount(MOUNT)
        if self._own_port is not None:
            await self._own_port.stopListening()
            self._own_port = None
        periodic = self._farm.remove_periodic(JANITOR)
        if periodic is not None:
            await periodic
        if self._consumer is not None:
            self._consumer.stopConsuming()
            self._consumer = None
        self.repository = None
        self._running = None

    async def _build_finished(self, build: dict[str, Any]) -> None:
        repository = self.repository
        if repository is None:
            return
        try:
            revoked = await repository.index.revoke_build(int(build["buildid"]))
        except Exception:
            log.err(None, f"farm artifacts: could not revoke build {build.get('buildid')}'s"
                    " tokens; they die at their time-to-live")
            return
        if revoked:
            log.msg(f"farm artifacts: build {build['buildid']} finished;"
                    f" {revoked} token(s) revoked")


def own_port_url(buildbot_url: str | None, interface: str, port: int) -> str:
    """The address of the repository's own port: buildbotURL's host (else ``interface``)."""
    host = urlsplit(buildbot_url or "").hostname or interface
    if host in ("0.0.0.0", "::"):
        host = "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"
