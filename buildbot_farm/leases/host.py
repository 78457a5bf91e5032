"""The buildlet coordinator inside FarmService: started, replaced and stopped with the
service's settings, served at ``/plugins/farm/coordinator``, swept by its periodic work.

``buildbot-farm coordinator`` runs the same :class:`~buildbot_farm.leases.runtime.LeaseRuntime`
on its own port (:mod:`buildbot_farm.leases.standalone`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from twisted.python import log

from buildbot_farm import db
from buildbot_farm.leases.config import FarmCoordinator
from buildbot_farm.leases.coordinator import Coordinator
from buildbot_farm.leases.runtime import SWEEPER, LeaseRuntime

if TYPE_CHECKING:
    from buildbot_farm.context import MountingFarmContext

__all__ = ["MOUNT", "LeasesHost"]

MOUNT = "coordinator"


class LeasesHost:
    """Runs the coordinator FarmService's settings ask for; ``runtime`` is None without one."""

    def __init__(self, farm: MountingFarmContext) -> None:
        self._farm = farm
        self.runtime: LeaseRuntime | None = None
        self._running: tuple[FarmCoordinator, db.Database] | None = None

    @property
    def coordinator(self) -> Coordinator | None:
        """The running coordinator (what the dashboard and the tests use); None without one."""
        return None if self.runtime is None else self.runtime.coordinator

    async def configure(self, wanted: FarmCoordinator | None) -> None:
        """Start, replace or stop the coordinator so it matches ``wanted`` and the database.

        A replaced coordinator is stopped without halting its buildlets: the new one
        re-adopts them.
        """
        database = self._farm.database
        if self.runtime is not None and self._running == (wanted, database):
            return
        if self.runtime is not None:
            old = await self._unmount()
            await old.coordinator.stop()
        if wanted is None or database is None:
            return
        master = self._farm.master
        runtime = await LeaseRuntime.start(
            wanted, database, master.reactor, Path(master.basedir),
            owner=master.name, name=master.name,
        )
        self.runtime, self._running = runtime, (wanted, database)
        self._farm.web_root.mount(MOUNT, runtime.resource, openapi="openapi/coordinator.json")
        self._farm.add_periodic(SWEEPER, wanted.sweep_interval, runtime.coordinator.sweep)

    async def stop(self) -> None:
        """Stop the coordinator; with ``on_stop="halt"`` destroy its buildlets too."""
        if self.runtime is None:
            return
        runtime = await self._unmount()
        halted = await runtime.stop()
        if runtime.settings.on_stop == "halt":
            log.msg(f"farm: stopping halted the buildlets {', '.join(halted) or '(none)'}")

    async def _unmount(self) -> LeaseRuntime:
        """Stop serving and sweeping (a sweep in progress ends first); the runtime it was."""
        assert self.runtime is not None
        runtime, self.runtime, self._running = self.runtime, None, None
        self._farm.web_root.unmount(MOUNT)
        sweeping = self._farm.remove_periodic(SWEEPER)
        if sweeping is not None:
            await sweeping
        return runtime
