"""A real coordinator on loopback with the process provider, for the lease tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest_twisted
from twisted.internet import reactor
from twisted.web import server

from buildbot_farm import db
from buildbot_farm.leases import keys
from buildbot_farm.leases.agent_client import AgentClient
from buildbot_farm.leases.api import CoordinatorResource
from buildbot_farm.leases.client import CoordinatorClient
from buildbot_farm.leases.coordinator import Coordinator
from buildbot_farm.leases.lease import ExpiryPolicy
from buildbot_farm.leases.pools import BuildletType
from buildbot_farm.leases.providers import ProcessProvider
from buildbot_farm.leases.providers.reverse import ReverseProvider
from buildbot_farm.web.client import http_client

SECRET = b"test-coordinator-secret"


def plain_http() -> Any:
    """An HTTP client on the test reactor that keeps no connections (no timers left behind)."""
    return http_client(reactor, persistent=False)


@dataclass
class RunningCoordinator:
    """A coordinator served over HTTP on 127.0.0.1, with what the tests need to reach it."""

    coordinator: Coordinator
    provider: ProcessProvider
    database: db.Database
    url: str
    port: Any
    clock: Any
    clients: list[CoordinatorClient] = field(default_factory=list)

    def client(self, user: str = "user-alice") -> CoordinatorClient:
        return CoordinatorClient(
            self.url, user, keys.user_key(SECRET, user), plain_http(), clock=reactor
        )

    async def shutdown(self) -> None:
        await self.port.stopListening()
        await self.coordinator.stop()


StartCoordinator = Callable[..., Awaitable[RunningCoordinator]]


@pytest_twisted.async_yield_fixture
async def start_coordinator(tmp_path: Path) -> AsyncIterator[StartCoordinator]:
    """A factory of coordinators sharing one database and buildlet root (like restarts do)."""
    started: list[RunningCoordinator] = []
    databases: list[db.Database] = []

    async def start(
        max_count: int = 2,
        warm: int = 0,
        policy: ExpiryPolicy | None = None,
        clock: Any = reactor,
        reverse_pool: int = 0,
        agent_arguments: tuple[str, ...] = (),
        agent_grace: float = 60.0,
        **isolation: Any,
    ) -> RunningCoordinator:
        """``isolation`` (``root``, ``run_as``, ``sandbox``, ``python``, ``protected``) goes
        to the ProcessProvider; the root is ``tmp_path/buildlets`` unless given."""
        database = await db.connect(f"sqlite:///{tmp_path / 'farm.sqlite'}", reactor)
        databases.append(database)
        root = isolation.pop("root", tmp_path / "buildlets")
        provider = ProcessProvider(root, reactor, agent_arguments=agent_arguments, **isolation)
        agents = AgentClient(plain_http())
        types = {"local": BuildletType("local", provider, max_count=max_count, warm=warm)}
        if reverse_pool:
            types["hosts"] = BuildletType("hosts", ReverseProvider(agents), reverse_pool)
        coordinator = Coordinator(database, clock, types, agents, policy, agent_grace=agent_grace)
        await coordinator.start()
        port = reactor.listenTCP(
            0,
            server.Site(CoordinatorResource(coordinator, SECRET, reactor)),
            interface="127.0.0.1",
        )
        running = RunningCoordinator(
            coordinator, provider, database, f"http://127.0.0.1:{port.getHost().port}", port, clock
        )
        started.append(running)
        return running

    yield start
    for running in started:
        if running.port.connected:
            await running.shutdown()
    if started:
        await started[-1].provider.reap(set())
    for database in databases:
        await database.stop()
