"""``Coordinator``: owns pools of buildlets and leases them to users.

All state lives in the farm database (``LeaseTable``); the coordinator keeps only locks and
in-flight work in memory. After a crash, :meth:`Coordinator.start` reads the rows back,
re-adopts every buildlet whose agent still answers, destroys the rest, and has each
provider destroy buildlets that no row owns.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task
from twisted.python import log

from buildbot_farm import db
from buildbot_farm.leases.agent_client import AgentClient, AgentError
from buildbot_farm.leases.lease import ExpiryPolicy, Lease, LeaseState, check_type
from buildbot_farm.leases.providers.base import BuildletProvider, ProviderError
from buildbot_farm.leases.table import LeaseTable

WARM_OWNER_PREFIX = "warm"
REVERSE = "reverse"
# Seconds between handing out a warm buildlet and starting its replacement: the replacement's
# start (a container, an agent, its pre-started worker's imports) would otherwise take CPU
# from the worker attaching to the buildlet just leased.
REFILL_DELAY = 1.0


@dataclass(frozen=True)
class BuildletType:
    """One kind of buildlet a user can ask for: where it comes from and how many may exist.

    ``max_count`` bounds the buildlets of this type (leased, idle or starting); ``warm``
    idle ones are kept ready so that a lease is near-instant.
    """

    name: str
    provider: BuildletProvider
    max_count: int = 4
    warm: int = 0

    def __post_init__(self) -> None:
        check_type(self.name)
        if self.max_count < 1 or not 0 <= self.warm <= self.max_count:
            raise ValueError(
                f"buildlet type {self.name}: need max_count >= 1 and 0 <= warm <= max_count"
            )


class CoordinatorError(Exception):
    """A request the coordinator refuses; ``status`` is the HTTP status that says so."""

    status = 400


class UnknownType(CoordinatorError):
    """No buildlet type of that name is configured."""


class PoolFull(CoordinatorError):
    """Every buildlet of the type is in use; try again after ``retry_after`` seconds."""

    status = 503
    retry_after = 30


class NoHostFree(PoolFull):
    """A ``reverse`` type has no registered host free right now."""


class NoSuchBuildlet(CoordinatorError):
    """No live buildlet of that name (never was, or expired, or destroyed)."""

    status = 502


def no_such_buildlet(name: str) -> str:
    """What NoSuchBuildlet says about ``name`` (the proxy says the same of others' buildlets)."""
    return f"no live buildlet named {name!r}: it expired or was destroyed"


class NotYours(CoordinatorError):
    """The buildlet is leased to someone else."""

    status = 403


class Coordinator:
    """Leases buildlets of the configured ``types`` to users.

    ``clock`` is the reactor (its ``seconds()`` is the time); ``agents`` talks to buildlet
    agents (status checks). Call :meth:`start` once the database is ready and
    :meth:`sweep` periodically (FarmService does both).
    """

    def __init__(
        self,
        database: db.Database,
        clock: Any,
        types: Mapping[str, BuildletType],
        agents: AgentClient,
        policy: ExpiryPolicy | None = None,
        name: str = "coordinator",
    ) -> None:
        self.types = dict(types)
        self.policy = policy or ExpiryPolicy()
        self.table = LeaseTable(database, name, self.policy)
        self._clock = clock
        self._agents = agents
        self._create_lock = defer.DeferredLock()
        self._warming: set[defer.Deferred[Any]] = set()

    def _type(self, name: str) -> BuildletType:
        try:
            return self.types[name]
        except KeyError:
            known = ", ".join(sorted(self.types)) or "none"
            raise UnknownType(f"unknown buildlet type {name!r}; this farm has: {known}") from None

    async def start(self) -> list[str]:
        """Recover after a restart and fill the warm pools; return what recovery did."""
        report = await self.recover()
        for line in report:
            log.msg(f"coordinator: {line}")
        self.fill_warm_pools()
        return report

    async def recover(self) -> list[str]:
        """Re-adopt live buildlets from the database; destroy dead, half-made and orphaned ones."""
        report = []
        known: dict[str, set[str]] = {}
        for lease in await self.table.all():
            buildlet_type = self.types.get(lease.type)
            alive = (
                buildlet_type is not None
                and lease.state in (LeaseState.LEASED, LeaseState.IDLE)
                and await self._answers(lease)
            )
            if alive:
                assert buildlet_type is not None
                known.setdefault(buildlet_type.provider.kind, set()).add(lease.handle)
                report.append(f"re-adopted {lease.name} ({lease.state.value})")
            else:
                await self._forget(lease)
                report.append(f"destroyed {lease.name}: it was {lease.state.value} and not live")
        for provider in {t.provider for t in self.types.values()}:
            for reaped in await provider.reap(known.get(provider.kind, set())):
                report.append(f"reaped {reaped}, which no lease owned")
        return report

    async def _answers(self, lease: Lease) -> bool:
        """Whether the buildlet's agent answers and its host is not being preempted."""
        try:
            status = await self._agents.status(lease.url, lease.secret)
        except AgentError:
            return False
        if status.get("preempted"):
            log.msg(f"coordinator: {lease.name} is being preempted: {status['preempted']}")
            return False
        return True

    async def _forget(self, lease: Lease) -> None:
        buildlet_type = self.types.get(lease.type)
        if buildlet_type is not None and lease.handle:
            try:
                await buildlet_type.provider.destroy(lease.handle)
            except ProviderError as e:
                log.msg(f"coordinator: destroying {lease.name} failed: {e}")
        await self.table.remove(lease.name)

    async def create(self, owner: str, type_name: str) -> Lease:
        """Lease a buildlet of ``type_name`` to ``owner``: a warm one at once, else a new one.

        Raises UnknownType, or PoolFull when ``max_count`` buildlets of the type exist.
        """
        buildlet_type = self._type(type_name)
        now = self._clock.seconds()
        warm = await self.table.lease_idle(owner, type_name, now)
        if warm is not None:
            refill = task.deferLater(self._clock, REFILL_DELAY, self.fill_warm_pools)
            self._warming.add(refill)
            refill.addBoth(self._done_warming, refill)
            return warm
        if buildlet_type.provider.kind == REVERSE:
            raise NoHostFree(
                f"no registered host of type {type_name} is free; retry in "
                f"{NoHostFree.retry_after} s, or register one with "
                f"`buildbot-farm agent --register URL --type {type_name}`"
            )
        name = await self._reserve(buildlet_type, owner)
        return await self._start(buildlet_type, name)

    async def _reserve(self, buildlet_type: BuildletType, owner: str | None) -> str:
        """Write the STARTING row, unless the type is at its maximum (one at a time)."""
        await self._create_lock.acquire()
        try:
            if await self.table.count(buildlet_type.name) >= buildlet_type.max_count:
                raise PoolFull(
                    f"all {buildlet_type.max_count} buildlets of type {buildlet_type.name} "
                    f"are in use; retry in {PoolFull.retry_after} s or destroy one of yours"
                )
            name = await self.table.next_name(owner or WARM_OWNER_PREFIX, buildlet_type.name)
            await self.table.add_starting(
                name, buildlet_type.name, buildlet_type.provider.kind, owner,
                self._clock.seconds(),
            )
            return name
        finally:
            self._create_lock.release()

    async def _start(self, buildlet_type: BuildletType, name: str) -> Lease:
        secret = secrets.token_hex(32)
        try:
            started = await buildlet_type.provider.start(
                name, secret, lambda handle: self.table.set_handle(name, handle)
            )
        except BaseException:
            await self.table.remove(name)
            raise
        return await self.table.mark_ready(
            name, started.url, secret, started.handle, self._clock.seconds()
        )

    async def register(self, type_name: str, url: str, secret: str) -> Lease:
        """Add a host's agent at ``url`` to a ``reverse`` type's pool as an idle buildlet.

        Registering the same ``url`` again is a heartbeat: it returns the existing lease.
        The agent must answer ``/status`` with ``secret`` before it is accepted.
        """
        buildlet_type = self._type(type_name)
        if buildlet_type.provider.kind != REVERSE:
            raise CoordinatorError(
                f"buildlet type {type_name} is not a reverse pool; hosts can join only "
                f"types configured with provider='reverse'"
            )
        for lease in await self.table.all():
            if lease.url == url and lease.secret == secret:
                return lease
        try:
            await self._agents.status(url, secret)
        except AgentError as e:
            raise CoordinatorError(f"the coordinator cannot reach your agent: {e}") from e
        name = await self._reserve(buildlet_type, None)
        handle = json.dumps({"url": url, "secret": secret})
        return await self.table.mark_ready(name, url, secret, handle, self._clock.seconds())

    def fill_warm_pools(self) -> None:
        """Start idle buildlets in the background until each type has its ``warm`` count."""
        for buildlet_type in self.types.values():
            if buildlet_type.warm:
                d = defer.ensureDeferred(self._top_up(buildlet_type))
                self._warming.add(d)
                d.addErrback(log.err, f"coordinator: warming {buildlet_type.name} failed")
                d.addBoth(self._done_warming, d)

    def _done_warming(self, result: object, d: defer.Deferred[Any]) -> object:
        self._warming.discard(d)
        return result

    async def _top_up(self, buildlet_type: BuildletType) -> None:
        while await self.table.count_idle(buildlet_type.name) < buildlet_type.warm:
            try:
                name = await self._reserve(buildlet_type, None)
            except PoolFull:
                return
            await self._start(buildlet_type, name)

    async def wait_until_warm(self) -> None:
        """Wait for background warming in progress (tests and benchmarks use it)."""
        while self._warming:
            await defer.DeferredList(list(self._warming), consumeErrors=True)

    async def owned(self, owner: str) -> list[Lease]:
        """``owner``'s live leases."""
        return await self.table.owned_by(owner)

    async def use(self, owner: str, name: str) -> Lease:
        """Check that ``owner`` may use buildlet ``name`` now, and renew its lease."""
        lease = await self.table.get(name)
        now = self._clock.seconds()
        if lease is None or lease.state is not LeaseState.LEASED:
            raise NoSuchBuildlet(no_such_buildlet(name))
        if lease.owner != owner:
            raise NotYours(f"buildlet {name} is leased to someone else")
        if lease.expires_at is not None and lease.expires_at <= now:
            await self.destroy(name)
            raise NoSuchBuildlet(f"the lease on {name} expired; create a new buildlet")
        await self.table.renew(name, now)
        return lease

    async def destroy(self, name: str) -> bool:
        """Destroy buildlet ``name`` once; False when it was already gone or being destroyed."""
        lease = await self.table.get(name)
        if lease is None or not await self.table.mark_halting(name):
            return False
        await self._forget(lease)
        self.fill_warm_pools()
        return True

    async def sweep(self) -> list[str]:
        """Destroy leases that expired, and forget idle buildlets that stopped answering."""
        gone = []
        for lease in await self.table.expired(self._clock.seconds()):
            if await self.destroy(lease.name):
                log.msg(f"coordinator: lease on {lease.name} expired; destroyed it")
                gone.append(lease.name)
        for lease in await self.table.all():
            if lease.state is LeaseState.IDLE and not await self._answers(lease):
                log.msg(f"coordinator: idle buildlet {lease.name} stopped answering or is being "
                        "preempted; forgot it")
                await self._forget(lease)
                gone.append(lease.name)
        return gone

    async def stop(self) -> None:
        """Stop warming; leave every buildlet running for the next start to re-adopt."""
        await self.wait_until_warm()
