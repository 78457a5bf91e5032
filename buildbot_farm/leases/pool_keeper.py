"""``PoolKeeper``: the buildlets of each pool, from a reserved row to destroyed.

It claims a pool's capacity (a warm buildlet, or a STARTING row while the pool has room),
starts buildlets through their providers and sets their agents' deadlines, keeps the warm
pools topped up, registers the hosts of reverse pools, and destroys buildlets. The
:class:`~buildbot_farm.leases.coordinator.Coordinator` builds leases, lines of waiting
creates, recovery and sweeps on it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer, task
from twisted.python import log

from buildbot_farm import db
from buildbot_farm.leases.agent_client import AgentClient, AgentError
from buildbot_farm.leases.model import ExpiryPolicy, Lease
from buildbot_farm.leases.pools import (
    REFILL_DELAY,
    RENEW_EVERY,
    REVERSE,
    WARM_OWNER_PREFIX,
    BuildletNotStarted,
    BuildletType,
    Claim,
    CoordinatorError,
    NoHostFree,
    PoolFull,
    UnknownType,
)
from buildbot_farm.leases.providers.base import ProviderError
from buildbot_farm.leases.store import LeaseTable
from buildbot_farm.leases.waiting import WaitingLines


class PoolKeeper:
    """Keeps the buildlets of the configured ``types`` (see the module's docstring).

    ``clock`` is the reactor (its ``seconds()`` is the time); ``agents`` talks to buildlet
    agents.
    """

    def __init__(
        self,
        database: db.Database,
        clock: Any,
        types: Mapping[str, BuildletType],
        agents: AgentClient,
        policy: ExpiryPolicy | None = None,
        name: str = "coordinator",
        agent_grace: float = 60.0,
    ) -> None:
        self.types = dict(types)
        self.policy = policy or ExpiryPolicy()
        self.table = LeaseTable(database, name, self.policy)
        self._clock = clock
        self._agents = agents
        self._create_lock = defer.DeferredLock()
        self._warming: set[defer.Deferred[Any]] = set()
        self._topping_up: set[str] = set()
        self.renew_every = min(RENEW_EVERY, self.policy.idle_timeout / 10)
        self._renewed: dict[str, float] = {}
        self._open: dict[str, tuple[int, task.LoopingCall]] = {}
        self.agent_grace = agent_grace
        self._stopped = False
        self._lines = WaitingLines()
        self._serving: set[str] = set()
        self._serve_again: set[str] = set()
        self._subscription: db.Subscription | None = None

    @property
    def clock(self) -> Any:
        """The reactor whose time the coordinator keeps (for its HTTP API's timers too)."""
        return self._clock

    def _type(self, name: str) -> BuildletType:
        try:
            return self.types[name]
        except KeyError:
            known = ", ".join(sorted(self.types)) or "none"
            raise UnknownType(f"unknown buildlet type {name!r}; this farm has: {known}") from None

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

    async def _set_agent_deadline(self, lease: Lease) -> None:
        """Tell the agent when to halt itself: ``agent_grace`` after its lease's expiry (after
        now for a warm buildlet); an agent that does not answer is left to the sweep."""
        now = self._clock.seconds()
        end = lease.expires_at if lease.expires_at is not None else now
        try:
            await self._agents.set_deadline(
                lease.url, lease.secret, max(end - now, 0.0) + self.agent_grace
            )
        except AgentError as e:
            log.msg(f"coordinator: cannot set the deadline of {lease.name}: {e}")

    async def _forget(self, lease: Lease) -> None:
        buildlet_type = self.types.get(lease.type)
        if buildlet_type is not None and lease.handle:
            try:
                await buildlet_type.provider.destroy(lease.handle)
            except ProviderError as e:
                log.msg(f"coordinator: destroying {lease.name} failed: {e}")
        await self.table.remove(lease.name)

    async def _claim(self, buildlet_type: BuildletType, owner: str) -> Claim:
        """Take a warm buildlet for ``owner``, or reserve a new one's row; PoolFull if neither."""
        now = self._clock.seconds()
        warm = await self.table.lease_idle(owner, buildlet_type.name, now)
        if warm is not None:
            # Leasing it renewed it: its first proxied request (the exec that starts a worker,
            # most often) need not write the renewal again before it is forwarded.
            self._renewed[warm.name] = now
            refill = task.deferLater(self._clock, REFILL_DELAY, self.fill_warm_pools)
            self._warming.add(refill)
            refill.addBoth(self._done_warming, refill)
            return warm
        if buildlet_type.provider.kind == REVERSE:
            raise NoHostFree(
                f"no registered host of type {buildlet_type.name} is free; retry in "
                f"{NoHostFree.retry_after} s, or register one with "
                f"`buildbot-farm agent --register URL --type {buildlet_type.name}`"
            )
        return await self._reserve(buildlet_type, owner)

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
        except ProviderError as e:
            await self.table.remove(name)
            raise BuildletNotStarted(f"cannot start buildlet {name}: {e}") from e
        except BaseException:
            await self.table.remove(name)
            raise
        ready = await self.table.mark_ready(
            name, started.url, secret, started.handle, self._clock.seconds()
        )
        await self._set_agent_deadline(ready)
        return ready

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
        if self._stopped:
            return
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
        # One top-up per type at a time: two at once (a lease's refill and a release's) would
        # each count the idle ones before the other's had started, and overshoot ``warm``.
        if buildlet_type.name in self._topping_up:
            return  # the running one checks the count again after each start
        self._topping_up.add(buildlet_type.name)
        try:
            # Capacity freed while creates wait in line is theirs, not the warm pool's.
            while (
                not self._lines.waiting(buildlet_type.name)
                and await self.table.count_idle(buildlet_type.name) < buildlet_type.warm
            ):
                try:
                    name = await self._reserve(buildlet_type, None)
                except PoolFull:
                    return
                await self._start(buildlet_type, name)
        finally:
            self._topping_up.discard(buildlet_type.name)

    async def wait_until_warm(self) -> None:
        """Wait for background warming in progress (tests and benchmarks use it)."""
        while self._warming:
            await defer.DeferredList(list(self._warming), consumeErrors=True)

    def _in_background(self, work: defer.Deferred[Any], what: str) -> None:
        self._warming.add(work)
        work.addErrback(log.err, f"coordinator: {what} failed")
        work.addBoth(self._done_warming, work)

    async def destroy(self, name: str) -> bool:
        """Destroy buildlet ``name`` once; False when it was already gone or being destroyed."""
        lease = await self.table.get(name)
        if lease is None or not await self.table.mark_halting(name):
            return False
        self._renewed.pop(name, None)
        await self._forget(lease)
        self.fill_warm_pools()
        return True
