"""The repository inside FarmService: mounted at ``/plugins/farm/artifacts/``, tokens revoked
when their build finishes, and the retention janitor."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python import log

from buildbot_farm.artifacts.config import ArtifactRepository
from buildbot_farm.artifacts.repository import Repository, open_repository
from buildbot_farm.artifacts.resource import ArtifactResource

MOUNT = "artifacts"
JANITOR = "artifact-janitor"


class RepositoryHost:
    """Runs the repository FarmService's settings ask for; ``repository`` is None without one."""

    def __init__(self, farm: Any) -> None:
        self._farm = farm
        self.repository: Repository | None = None
        self._consumer: Any = None
        self._running: tuple[ArtifactRepository, Any] | None = None

    async def configure(self, wanted: ArtifactRepository | None) -> None:
        """Start, replace or stop the repository so it matches ``wanted`` and the database."""
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
        self._consumer = await master.mq.startConsuming(
            lambda key, build: defer.ensureDeferred(self._build_finished(build)),
            ("builds", None, "finished"),
        )
        self.repository = repository
        self._running = (wanted, database)
        self._farm.web_root.mount(MOUNT, ArtifactResource(repository))
        self._farm.add_periodic(JANITOR, wanted.janitor_interval, repository.sweep)
        log.msg(f"farm: artifact repository in {repository.storage.root},"
                f" served at {repository.public_url}")

    async def stop(self) -> None:
        """Unmount the repository and stop revoking and sweeping."""
        if self.repository is None:
            return
        self._farm.web_root.unmount(MOUNT)
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
