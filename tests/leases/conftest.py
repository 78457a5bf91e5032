"""A real coordinator on loopback with the process provider, for the lease tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, Callable

import pytest_twisted

from buildbot_farm import db
from buildbot_farm.leases.model import ExpiryPolicy
from buildbot_farm.testing import LocalCoordinator, local_coordinator
from buildbot_farm.web.client import http_client
from tests.harness.twisted_reactor import reactor

SECRET = b"test-coordinator-secret"

#: The coordinator the lease tests start (the plugin's own test kit).
RunningCoordinator = LocalCoordinator


def plain_http() -> Any:
    """An HTTP client on the test reactor that keeps no connections (no timers left behind)."""
    return http_client(reactor, persistent=False)


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
        running = await local_coordinator(
            database, reactor, root, SECRET, max_count=max_count, warm=warm, policy=policy,
            clock=clock, reverse_pool=reverse_pool, agent_grace=agent_grace,
            agent_arguments=agent_arguments, **isolation,
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
