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
:func:`fake_coordinator` is the same coordinator with no socket, no process and no thread:
its API as a resource for ``treq.testing.StubTreq``, its leases in :func:`memory_database`,
its buildlets names that a :class:`FakeBuildletProvider` keeps.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from treq.testing import StubTreq
from twisted.internet import defer
from twisted.web import resource, server
from twisted.web.server import Request

from buildbot_farm import db
from buildbot_farm.leases import keys
from buildbot_farm.leases.agent_client import AgentClient
from buildbot_farm.leases.api import CoordinatorResource
from buildbot_farm.leases.bulk_relay import BulkRelays
from buildbot_farm.leases.client import CoordinatorClient
from buildbot_farm.leases.coordinator import Coordinator
from buildbot_farm.leases.model import ExpiryPolicy
from buildbot_farm.leases.pools import BuildletType
from buildbot_farm.leases.providers import ProcessProvider
from buildbot_farm.leases.providers.agent_processes import maybe_await
from buildbot_farm.leases.providers.base import BuildletProvider, StartedBuildlet
from buildbot_farm.leases.providers.reverse import ReverseProvider
from buildbot_farm.remote.protocol import PROTOCOL_VERSION, SECRET_HEADER
from buildbot_farm.web import FarmRoot
from buildbot_farm.web.client import http_client

__all__ = [
    "FAKE_COORDINATOR_URL",
    "FakeBuildletProvider",
    "FakeCoordinator",
    "FakeFarmContext",
    "LocalCoordinator",
    "fake_coordinator",
    "local_coordinator",
    "memory_database",
]


# Where a fake buildlet's agent "listens" (the FakeBuildletProvider's resource answers for it),
# and the URL a FakeCoordinator's clients use; neither is ever resolved.
FAKE_AGENTS_URL = "http://fake-agents.invalid/"
FAKE_COORDINATOR_URL = "http://fake-coordinator.invalid"


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
    relays: BulkRelays | None = None,
    **provider_options: Any,
) -> LocalCoordinator:
    """A started coordinator on ``database``, served on a free port of 127.0.0.1.

    Its pool ``local`` holds up to ``max_count`` buildlets (``warm`` kept idle): agent
    processes under ``root``, started by :class:`ProcessProvider` with
    ``provider_options`` (``run_as``, ``sandbox``, ``python``, ``agent_arguments``, ...).
    With ``reverse_pool`` it also has a pool ``hosts`` of that many hosts that join it.
    Leases expire by ``policy`` on ``clock`` (default: ``reactor``); ``relays`` run the
    proxy's large downloads (default: ``BulkRelays()``). Its HTTP clients keep
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
    api = CoordinatorResource(coordinator, secret, reactor, relays)
    port = reactor.listenTCP(0, server.Site(api), interface="127.0.0.1")
    return LocalCoordinator(coordinator, provider, database,
                            f"http://127.0.0.1:{port.getHost().port}", port, clock, secret,
                            reactor)


class FakeBuildletProvider(BuildletProvider, resource.Resource):
    """Buildlets that are only names, and their agents as one in-memory resource.

    ``start`` answers at once with an agent URL under :data:`FAKE_AGENTS_URL`; as a
    resource, the provider answers there what a coordinator asks an agent
    (``GET NAME/status``, ``POST NAME/deadline``, ``POST NAME/halt``), checking the
    buildlet's secret as a real agent does. :attr:`live` names the buildlets started and not
    destroyed; :attr:`deadlines` the seconds each agent was last told to live.
    """

    kind = "fake"
    isLeaf = True

    def __init__(self) -> None:
        resource.Resource.__init__(self)
        self._secrets: dict[str, str] = {}
        #: The last ``/deadline`` each live buildlet's agent was given, in seconds from then.
        self.deadlines: dict[str, float] = {}

    @property
    def live(self) -> list[str]:
        """The names of the buildlets started and not destroyed, sorted."""
        return sorted(self._secrets)

    async def start(
        self, name: str, secret: str, on_handle: Callable[[str], object]
    ) -> StartedBuildlet:
        """Make buildlet ``name`` live; its handle is ``{"name": NAME}``."""
        handle = json.dumps({"name": name})
        await maybe_await(on_handle(handle))
        self._secrets[name] = secret
        return StartedBuildlet(f"{FAKE_AGENTS_URL}{name}/", handle)

    async def destroy(self, handle: str) -> None:
        """Forget the buildlet of ``handle``; quiet when it is already gone."""
        self._forget(json.loads(handle)["name"])

    async def reap(self, known_handles: set[str]) -> list[str]:
        """Forget the live buildlets whose handles are not in ``known_handles``."""
        known = {json.loads(handle)["name"] for handle in known_handles}
        reaped = [name for name in self.live if name not in known]
        for name in reaped:
            self._forget(name)
        return [f"fake buildlet {name}" for name in reaped]

    def _forget(self, name: str) -> None:
        self._secrets.pop(name, None)
        self.deadlines.pop(name, None)

    def render(self, request: Request) -> bytes:
        """Answer as the agent of the buildlet named by the path's first segment."""
        name, what = ([p.decode(errors="replace") for p in request.postpath or []] + ["", ""])[:2]
        request.setHeader(b"content-type", b"application/json")
        if name not in self._secrets:
            request.setResponseCode(404)
            return json.dumps({"error": f"no fake buildlet {name!r}"}).encode()
        if request.getHeader(SECRET_HEADER) != self._secrets[name]:
            request.setResponseCode(401)
            return json.dumps({"error": "wrong buildlet secret"}).encode()
        if (request.method, what) == (b"GET", "status"):
            return json.dumps({"Version": PROTOCOL_VERSION, "preempted": None}).encode()
        if (request.method, what) == (b"POST", "deadline"):
            args: dict[bytes, list[bytes]] = request.args or {}
            self.deadlines[name] = float(args[b"seconds"][0])
            return b"{}"
        if (request.method, what) == (b"POST", "halt"):
            self._forget(name)
            return b"{}"
        request.setResponseCode(404)
        return json.dumps({"error": f"a fake agent answers only status, deadline and halt,"
                                    f" not {what!r}"}).encode()


@dataclass
class FakeCoordinator:
    """A coordinator to test lease clients against (see :func:`fake_coordinator`)."""

    coordinator: Coordinator
    provider: FakeBuildletProvider
    database: db.Database
    #: The coordinator's HTTP API (``/buildlet/create``, ``/buildlet/list``, ``/buildlet/lost``,
    #: and ``POST /halt`` with ``X-Buildlet-Proxy: NAME``), to mount or to hand to StubTreq.
    resource: CoordinatorResource
    secret: bytes
    #: A StubTreq over :attr:`resource`: what :meth:`client` talks through.
    http: StubTreq
    url: str = FAKE_COORDINATOR_URL
    _owns_database: bool = field(default=True, repr=False)

    def key(self, user: str) -> str:
        """The key ``user`` (``user-NAME``) authenticates with (HTTP Basic)."""
        return keys.user_key(self.secret, user)

    def client(self, user: str = "user-alice") -> CoordinatorClient:
        """A client of the coordinator as ``user``, talking through :attr:`http`."""
        return CoordinatorClient(self.url, user, self.key(user), self.http)

    async def stop(self) -> None:
        """Stop the coordinator, and the database unless it was handed in."""
        await self.coordinator.stop()
        if self._owns_database:
            await self.database.stop()


async def fake_coordinator(
    reactor: Any,
    secret: bytes = b"fake-coordinator-secret",
    max_count: int = 4,
    warm: int = 0,
    policy: ExpiryPolicy | None = None,
    database: db.Database | None = None,
) -> FakeCoordinator:
    """A started coordinator with no socket, no process and no thread, as ``treq.testing``'s
    StubTreq is a client with no socket.

    It is the farm's own coordinator and HTTP API on ``database`` (default: a new
    :func:`memory_database`); its one pool, ``local``, holds up to ``max_count`` buildlets
    (``warm`` kept idle) that a :class:`FakeBuildletProvider` makes; leases expire by
    ``policy`` on ``reactor``'s clock. Creating, listing, losing and destroying buildlets
    answer as the real coordinator does; requests proxied to a buildlet's agent (exec,
    files) do not, as no agent runs. Under Buildbot's ``TestReactorMixin`` the database
    needs no thread, so each request completes at once::

        class LeaseTests(TestReactorMixin, unittest.TestCase):
            async def test_lease(self) -> None:
                self.setup_test_reactor()
                farm = await fake_coordinator(self.reactor, max_count=1)
                self.addCleanup(farm.stop)
                client = farm.client("user-alice")
                name = (await client.create("local"))["Name"]
                assert [b["Name"] for b in await client.buildlets()] == [name]
                await client.destroy(name)
                assert farm.provider.live == []

    Code with its own HTTP client can use ``farm.http`` (or ``StubTreq(farm.resource)``)
    with ``auth=(user, farm.key(user))`` and the URL :data:`FAKE_COORDINATOR_URL`. On a
    reactor whose thread pool is real, an answer arrives only at a ``farm.http.flush()``
    after the database answered (StubTreq's rule for resources that answer later); there,
    :func:`local_coordinator` serves on a real port instead.
    """
    owns_database = database is None
    if database is None:
        database = await memory_database(reactor)
    provider = FakeBuildletProvider()
    types = {"local": BuildletType("local", provider, max_count=max_count, warm=warm)}
    coordinator = Coordinator(database, reactor, types, AgentClient(StubTreq(provider)), policy)
    await coordinator.start()
    api = CoordinatorResource(coordinator, secret, reactor)
    return FakeCoordinator(coordinator, provider, database, api, secret, StubTreq(api),
                           _owns_database=owns_database)
