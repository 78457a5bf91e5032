"""``LeaseRuntime``: a running buildlet coordinator, the same in FarmService and standalone.

FarmService (``coordinator=util.FarmCoordinator(...)``) and ``buildbot-farm coordinator``
both run one: the :class:`Coordinator` on the farm database, the HTTP API serving it,
and the periodic sweep that destroys expired leases. Only where it is served and whose
clock runs the sweep differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.web import resource

from buildbot_farm import db
from buildbot_farm.leases.agent_client import AgentClient
from buildbot_farm.leases.api import CoordinatorResource
from buildbot_farm.leases.config import FarmCoordinator
from buildbot_farm.leases.coordinator import Coordinator
from buildbot_farm.periodic import PeriodicTask
from buildbot_farm.web.client import http_client

__all__ = ["SWEEPER", "LeaseRuntime"]

#: The name of the periodic sweep among a service's periodic tasks.
SWEEPER = "lease-sweeper"


class LeaseRuntime:
    """A started coordinator with the ``resource`` that serves its API.

    Make one with :meth:`start`; run :meth:`sweeper` on a clock; end with :meth:`stop`.
    """

    def __init__(
        self, settings: FarmCoordinator, coordinator: Coordinator, api: resource.Resource
    ) -> None:
        self.settings = settings
        self.coordinator = coordinator
        self.resource = api

    @classmethod
    async def start(
        cls,
        settings: FarmCoordinator,
        database: db.Database,
        reactor: Any,
        state_dir: Path,
        owner: str,
        name: str | None = None,
    ) -> LeaseRuntime:
        """Start a coordinator for ``settings`` on ``database`` (recovering the buildlets
        a previous run left) and make its API.

        ``state_dir`` holds process buildlets; ``owner`` marks the buildlets this runtime
        creates; ``name`` (default: the coordinator's own) keys its rows in the database.
        """
        agents = AgentClient(http_client(reactor))
        coordinator = Coordinator(
            database,
            reactor,
            settings.buildlet_types(state_dir, reactor, agents, owner),
            agents,
            settings.policy,
            agent_grace=settings.agent_grace,
            **({} if name is None else {"name": name}),
        )
        await coordinator.start()
        api = CoordinatorResource(coordinator, settings.secret.encode(), reactor)
        return cls(settings, coordinator, api)

    def sweeper(self, clock: Any) -> PeriodicTask:
        """The sweep every ``sweep_interval`` seconds on ``clock`` (not started): a failing
        sweep is logged and the next one still runs."""
        return PeriodicTask(SWEEPER, self.settings.sweep_interval, self.coordinator.sweep, clock)

    async def stop(self) -> list[str]:
        """Stop the coordinator: with ``on_stop="halt"`` destroy its buildlets and return
        their names, otherwise leave them for the next start to re-adopt (and return [])."""
        if self.settings.on_stop == "halt":
            return await self.coordinator.halt_all()
        await self.coordinator.stop()
        return []
