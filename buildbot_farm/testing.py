"""Test helpers for code that uses the farm: import them in your own tests.

Like ``treq.testing``, these are real implementations in a form convenient for tests, not
mocks: :func:`memory_database` is the SQLite backend on an in-memory database, migrated to
the current schema. Under Buildbot's ``TestReactorMixin`` its calls complete without
threads, so synchronous tests can use it. :class:`FakeFarmContext` stands in for
FarmService where a capability's host (or a sixth capability of your own) is handed a
:class:`~buildbot_farm.context.FarmContext`: the database and master are yours, the
periodic work is recorded for the test to run, and the web root is a real one.
:func:`local_coordinator` serves a real buildlet coordinator on 127.0.0.1 whose buildlets
are agent processes on this machine, for tests of lease clients and workers.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer
from twisted.web import server

from buildbot_farm import db
from buildbot_farm.leases import keys
from buildbot_farm.leases.agent_client import AgentClient
from buildbot_farm.leases.api import CoordinatorResource
from buildbot_farm.leases.client import CoordinatorClient
from buildbot_farm.leases.coordinator import Coordinator
from buildbot_farm.leases.model import ExpiryPolicy
from buildbot_farm.leases.pools import BuildletType
from buildbot_farm.leases.providers import ProcessProvider
from buildbot_farm.leases.providers.reverse import ReverseProvider
from buildbot_farm.web import FarmRoot
from buildbot_farm.web.client import http_client

__all__ = ["FakeFarmContext", "LocalCoordinator", "local_coordinator", "memory_database"]


async def memory_database(reactor: Any) -> db.Database:
    """A started farm database in memory, at the newest schema; ``stop()`` it when done."""
    return await db.connect("sqlite://", reactor)


class FakeFarmContext:
    """A :class:`~buildbot_farm.context.MountingFarmContext` for tests: FarmService's parts
    a capability uses, without a running service.

    ``master`` is any master the capability can use (Buildbot's ``fakemaster.make_master``,
    or a smaller fake with what the capability reads); ``database`` the farm database (see
    :func:`memory_database`), None for a farm whose database is not open. Periodic work is
    not scheduled: :attr:`periodic` holds each task's interval, and :meth:`run_periodic`
    runs a task's work once. Resources mount on :attr:`web_root`, a real ``FarmRoot``.
    """

    def __init__(self, master: Any, database: db.Database | None) -> None:
        self.master = master
        self.database = database
        self.web_root = FarmRoot()
        #: The interval of each periodic task added and not removed, by name.
        self.periodic: dict[str, float] = {}
        self._work: dict[str, Callable[[], Awaitable[Any]]] = {}

    def add_periodic(
        self, name: str, interval: float, work: Callable[[], Awaitable[Any]]
    ) -> object:
        """Record the task ``name`` (replacing one of that name); it is never run by itself."""
        self.periodic[name] = interval
        self._work[name] = work
        return name

    def remove_periodic(self, name: str) -> defer.Deferred[Any] | None:
        """Forget the task ``name``; None, as no run of it can be in progress."""
        self.periodic.pop(name, None)
        self._work.pop(name, None)
        return None

    async def run_periodic(self, name: str) -> Any:
        """Run the work of the task ``name`` once, as its next period would; its result.

        Raises KeyError naming the tasks there are when there is no task ``name``.
        """
        if name not in self._work:
            raise KeyError(f"no periodic task {name!r}; there are {sorted(self._work)}")
        return await self._work[name]()


@dataclass
class LocalCoordinator:
    """A coordinator served on 127.0.0.1 (see :func:`local_coordinator`)."""

    coordinator: Coordinator
    provider: ProcessProvider
    database: db.Database
    url: str
    port: Any
    clock: Any
    secret: bytes
    reactor: Any

    def client(self, user: str = "user-alice") -> CoordinatorClient:
        """A client of the coordinator as ``user`` (its key derived from the secret)."""
        return CoordinatorClient(self.url, user, keys.user_key(self.secret, user),
                                 http_client(self.reactor, persistent=False), clock=self.reactor)

    async def shutdown(self) -> None:
        """Stop serving and stop the coordinator; its buildlets go on running (re-adopted
        by the next coordinator on the database, or removed by ``provider.reap(set())``)."""
        await self.port.stopListening()
        await self.coordinator.stop()


async def local_coordinator(
    database: db.Database,
    reactor: Any,
    root: Path,
    secret: bytes,
    max_count: int = 2,
    warm: int = 0,
    policy: ExpiryPolicy | None = None,
    clock: Any = None,
    reverse_pool: int = 0,
    agent_grace: float = 60.0,
    **provider_options: Any,
) -> LocalCoordinator:
    """A started coordinator on ``database``, served on a free port of 127.0.0.1.

    Its pool ``local`` holds up to ``max_count`` buildlets (``warm`` kept idle): agent
    processes under ``root``, started by :class:`ProcessProvider` with
    ``provider_options`` (``run_as``, ``sandbox``, ``python``, ``agent_arguments``, ...).
    With ``reverse_pool`` it also has a pool ``hosts`` of that many hosts that join it.
    Leases expire by ``policy`` on ``clock`` (default: ``reactor``). Its HTTP clients keep
    no connections, so a test leaves no timers behind. :meth:`LocalCoordinator.shutdown`
    it, then ``provider.reap(set())`` removes the buildlets it left.
    """
    clock = reactor if clock is None else clock
    provider = ProcessProvider(root, reactor, **provider_options)
    agents = AgentClient(http_client(reactor, persistent=False))
    types = {"local": BuildletType("local", provider, max_count=max_count, warm=warm)}
    if reverse_pool:
        types["hosts"] = BuildletType("hosts", ReverseProvider(agents), reverse_pool)
    coordinator = Coordinator(database, clock, types, agents, policy, agent_grace=agent_grace)
    await coordinator.start()
    port = reactor.listenTCP(0, server.Site(CoordinatorResource(coordinator, secret, reactor)),
                             interface="127.0.0.1")
    return LocalCoordinator(coordinator, provider, database,
                            f"http://127.0.0.1:{port.getHost().port}", port, clock, secret,
                            reactor)
