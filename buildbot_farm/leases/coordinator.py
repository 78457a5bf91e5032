"""``Coordinator``: owns pools of buildlets and leases them to users.

All state lives in the farm database (``LeaseTable``); the coordinator keeps only locks and
in-flight work in memory. After a crash, :meth:`Coordinator.start` reads the rows back,
re-adopts every buildlet whose agent still answers, destroys the rest, and has each
provider destroy buildlets that no row owns.

Every agent enforces a deadline of its own (``POST /deadline``): the coordinator sets it to
the lease's expiry plus ``agent_grace`` seconds when it starts or re-adopts a buildlet, and
again at each sweep (``agent_grace`` from now for a warm one). ``agent_grace`` must exceed
the time between sweeps; then no agent halts itself while its coordinator runs, and when
the coordinator never comes back, every agent halts itself by then.

A create that finds its pool full can wait in line (:meth:`Coordinator.create_waiting`):
each pool has a first-come, first-served line of waiting creates in this coordinator's
memory, served whenever a buildlet of the pool frees up: released, expired, forgotten, or
a warm or registered one ready. The table announces those on the database's
``farm_buildlets`` channel; the coordinator listens to its own announcements (PostgreSQL
delivers them from every process sharing the rows), and every sweep serves the lines
again in case one was missed.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Union

from twisted.internet import defer, task
from twisted.python import failure, log

from buildbot_farm import db
from buildbot_farm.leases.agent_client import AgentClient, AgentError
from buildbot_farm.leases.lease import ExpiryPolicy, Lease, LeaseState, check_type
from buildbot_farm.leases.providers.base import BuildletProvider, ProviderError
from buildbot_farm.leases.table import LeaseTable
from buildbot_farm.leases.waiting import PlaceCallback, Waiter, WaitingLines

WARM_OWNER_PREFIX = "warm"
REVERSE = "reverse"
# Seconds between handing out a warm buildlet and starting its replacement: the replacement's
# start (a container, an agent, its pre-started worker's imports) would otherwise take CPU
# from the worker attaching to the buildlet just leased.
REFILL_DELAY = 1.0
# A lease in use is renewed (one database write) at most once per this many seconds, or per
# a tenth of the idle timeout if that is shorter; while a proxied request to it is open (a
# long exec), it is renewed that often too.
RENEW_EVERY = 30.0
# How many lost buildlets the coordinator remembers, to say why when one is used.
LOST_KEPT = 1000

# What claiming a pool's capacity gives: a warm buildlet, leased, or the name of a STARTING row.
Claim = Union[Lease, str]


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


class BuildletNotStarted(CoordinatorError):
    """The provider could not start a buildlet (an image the engine lacks, a master
    directory the buildlet user could read, ...); the message says why and what to do."""

    status = 500


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
        self._lost: dict[str, str] = {}  # buildlet -> why it was lost, the latest LOST_KEPT
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

    async def start(self) -> list[str]:
        """Recover after a restart and fill the warm pools; return what recovery did."""
        report = await self.recover()
        for line in report:
            log.msg(f"coordinator: {line}")
        self._subscription = await self.table.listen(self._serve_lines)
        for provider in {t.provider for t in self.types.values()}:
            provider.watch(self.lose)
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
                await self._set_agent_deadline(lease)
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

    async def create(self, owner: str, type_name: str) -> Lease:
        """Lease a buildlet of ``type_name`` to ``owner``: a warm one at once, else a new one.

        Raises UnknownType, or PoolFull when ``max_count`` buildlets of the type exist or
        other creates wait in line for one (nobody jumps the line).
        """
        buildlet_type = self._type(type_name)
        waiting = self._lines.waiting(type_name)
        if waiting:
            raise PoolFull(
                f"all {buildlet_type.max_count} buildlets of type {type_name} are in use and "
                f"{waiting} create(s) wait in line; retry in {PoolFull.retry_after} s, or wait "
                f"in line yourself (form field wait=SECONDS)"
            )
        claimed = await self._claim(buildlet_type, owner)
        if isinstance(claimed, Lease):
            return claimed
        return await self._start(buildlet_type, claimed)

    async def _claim(self, buildlet_type: BuildletType, owner: str) -> Claim:
        """Take a warm buildlet for ``owner``, or reserve a new one's row; PoolFull if neither."""
        warm = await self.table.lease_idle(owner, buildlet_type.name, self._clock.seconds())
        if warm is not None:
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

    def create_waiting(
        self, owner: str, type_name: str, wait: float, on_place: PlaceCallback
    ) -> defer.Deferred[Lease]:
        """Like :meth:`create`, but on a full pool wait in line up to ``wait`` seconds.

        ``on_place(ahead)`` hears how many creates are ahead in this coordinator's line each
        time that changes (0: served next). Waiters are served first come, first served as
        buildlets of the type free up; the result fails with PoolFull if none does in time.
        Cancel the result to leave the line: a buildlet got for a waiter that left is
        destroyed, never left leased to nobody. Raises UnknownType at once.
        """
        buildlet_type = self._type(type_name)
        waiter = Waiter(owner, on_place)
        waiter.result = defer.Deferred(lambda _: self._leave_line(type_name, waiter))
        if self._lines.waiting(type_name):
            self._line_up(buildlet_type, waiter, wait)
        else:
            first = defer.ensureDeferred(self.create(owner, type_name))
            first.addCallbacks(
                self._hand_over, self._first_try_failed, callbackArgs=(waiter,),
                errbackArgs=(buildlet_type, waiter, wait),
            )
        return waiter.result

    def waiting(self, type_name: str) -> int:
        """How many creates wait in this coordinator's line for a ``type_name`` buildlet."""
        return self._lines.waiting(type_name)

    def _leave_line(self, type_name: str, waiter: Waiter) -> None:
        self._lines.leave(type_name, waiter)

    def _first_try_failed(
        self, reason: failure.Failure, buildlet_type: BuildletType, waiter: Waiter, wait: float
    ) -> None:
        if waiter.gone:
            return
        if reason.check(PoolFull) and wait > 0:
            self._line_up(buildlet_type, waiter, wait)
        else:
            waiter.result.errback(reason)

    def _line_up(self, buildlet_type: BuildletType, waiter: Waiter, wait: float) -> None:
        deadline = self._clock.callLater(wait, self._out_of_time, buildlet_type, waiter, wait)
        self._lines.join(buildlet_type.name, waiter, deadline)
        # Serve at once: what freed up while this create tried its luck woke nobody.
        self._serve_line(buildlet_type.name)

    def _out_of_time(self, buildlet_type: BuildletType, waiter: Waiter, wait: float) -> None:
        if self._lines.leave(buildlet_type.name, waiter) and not waiter.gone:
            waiter.result.errback(PoolFull(
                f"no buildlet of type {buildlet_type.name} freed up within {wait:g} s (all "
                f"{buildlet_type.max_count} in use); retry later, or destroy one of yours"
            ))

    def _hand_over(self, lease: Lease, waiter: Waiter) -> None:
        """Give ``lease`` to ``waiter``; destroy it if the waiter is gone."""
        if not waiter.gone:
            waiter.result.callback(lease)
            return
        log.msg(f"coordinator: whoever asked for {lease.name} left before getting it; "
                "destroying it")
        self._in_background(defer.ensureDeferred(self.destroy(lease.name)), "destroying it")

    def _in_background(self, work: defer.Deferred[Any], what: str) -> None:
        self._warming.add(work)
        work.addErrback(log.err, f"coordinator: {what} failed")
        work.addBoth(self._done_warming, work)

    def _serve_lines(self) -> None:
        """Serve every line: something of this coordinator's freed up."""
        for type_name in self.types:
            self._serve_line(type_name)

    def _serve_line(self, type_name: str) -> None:
        """Serve the line of ``type_name`` (once more, if it is being served right now)."""
        if not self._lines.waiting(type_name):
            return
        if type_name in self._serving:
            self._serve_again.add(type_name)
            return
        self._serving.add(type_name)
        serving = defer.ensureDeferred(self._serve(self.types[type_name]))
        serving.addBoth(self._served, type_name)
        self._in_background(serving, f"serving the line for {type_name}")

    def _served(self, result: object, type_name: str) -> object:
        self._serving.discard(type_name)
        return result

    async def _serve(self, buildlet_type: BuildletType) -> None:
        """Give what is free to the head of the line, in order, until nothing is."""
        name = buildlet_type.name
        while (head := self._lines.head(name)) is not None:
            self._serve_again.discard(name)
            try:
                claimed = await self._claim(buildlet_type, head.owner)
            except PoolFull:
                if name in self._serve_again:
                    continue
                return
            if self._lines.head(name) is not head:  # it left (gone, out of time) meanwhile
                await self._give_back(claimed)
                continue
            self._lines.leave(name, head)
            if isinstance(claimed, Lease):
                self._hand_over(claimed, head)
            else:
                started = defer.ensureDeferred(self._start(buildlet_type, claimed))
                started.addCallbacks(
                    self._hand_over, self._start_failed, callbackArgs=(head,), errbackArgs=(head,)
                )
                self._in_background(started, f"starting {claimed}")
        self.fill_warm_pools()

    def _start_failed(self, reason: failure.Failure, waiter: Waiter) -> failure.Failure | None:
        if waiter.gone:
            return reason
        waiter.result.errback(reason)
        return None

    async def _give_back(self, claimed: Claim) -> None:
        if isinstance(claimed, Lease):
            await self.destroy(claimed.name)
        else:
            await self.table.remove(claimed)

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

    async def owned(self, owner: str) -> list[Lease]:
        """``owner``'s live leases."""
        return await self.table.owned_by(owner)

    async def use(self, owner: str, name: str) -> Lease:
        """Check that ``owner`` may use buildlet ``name`` now, and renew its lease."""
        lease = await self.table.get(name)
        now = self._clock.seconds()
        if lease is None or lease.state is not LeaseState.LEASED:
            if lease is None and name in self._lost:
                raise NoSuchBuildlet(f"buildlet {name} was lost with {self._lost[name]}; "
                                     "create a new buildlet")
            raise NoSuchBuildlet(no_such_buildlet(name))
        if lease.owner != owner:
            raise NotYours(f"buildlet {name} is leased to someone else")
        if lease.expires_at is not None and lease.expires_at <= now:
            await self.destroy(name)
            raise NoSuchBuildlet(f"the lease on {name} expired; create a new buildlet")
        await self.renew(name)
        return lease

    async def renew(self, name: str) -> None:
        """Renew ``name``'s lease, unless this coordinator did less than ``renew_every`` ago
        (so that a busy lease costs one database write per ``renew_every``, not per request)."""
        now = self._clock.seconds()
        if now < self._renewed.get(name, float("-inf")) + self.renew_every * 0.99:
            return
        self._renewed[name] = now
        await self.table.renew(name, now)

    def hold(self, name: str) -> Callable[[], None]:
        """Keep ``name``'s lease renewed while a proxied request to it is open (a long exec is
        use, however quiet); call the function returned once the request has ended."""
        count, loop = self._open.get(name, (0, None))
        if loop is None:
            loop = task.LoopingCall(lambda: defer.ensureDeferred(self.renew(name)))
            loop.clock = self._clock
            loop.start(self.renew_every, now=False).addErrback(
                log.err, f"coordinator: renewing {name} while in use failed")
        self._open[name] = (count + 1, loop)
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            entry = self._open.pop(name, None)
            if entry is None:
                return  # the coordinator stopped
            left, running = entry
            if left > 1:
                self._open[name] = (left - 1, running)
            elif running.running:
                running.stop()

        return release

    async def destroy(self, name: str) -> bool:
        """Destroy buildlet ``name`` once; False when it was already gone or being destroyed."""
        lease = await self.table.get(name)
        if lease is None or not await self.table.mark_halting(name):
            return False
        self._renewed.pop(name, None)
        await self._forget(lease)
        self.fill_warm_pools()
        return True

    async def lose(self, names: list[str], reason: str) -> list[str]:
        """Mark the leases on buildlets ``names`` lost (their machine stopped answering):
        each is forgotten, and using it says it was lost with ``reason``. Returns the names
        of the leases that were live."""
        lost = []
        for name in names:
            lease = await self.table.get(name)
            if lease is None or not await self.table.mark_halting(name):
                continue
            self._lost[name] = reason
            while len(self._lost) > LOST_KEPT:
                del self._lost[next(iter(self._lost))]
            self._renewed.pop(name, None)
            log.msg(f"coordinator: lease on {name} ({lease.state.value}, "
                    f"{lease.owner or 'no owner'}) lost with {reason}")
            await self._forget(lease)
            lost.append(name)
        self.fill_warm_pools()
        self._serve_lines()
        return lost

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
            elif lease.state in (LeaseState.LEASED, LeaseState.IDLE):
                await self._set_agent_deadline(lease)
        self._serve_lines()
        return gone

    async def stop(self) -> None:
        """Stop warming, renewing and serving the lines; leave every buildlet running for the
        next start to re-adopt.

        Each agent halts itself by its deadline if no coordinator starts again to renew it.
        Creates waiting in line fail with PoolFull (they may retry with the next coordinator).
        """
        self._stopped = True
        for provider in {t.provider for t in self.types.values()}:
            provider.unwatch()
        for _, loop in self._open.values():
            if loop.running:
                loop.stop()
        self._open.clear()
        if self._subscription is not None:
            await self._subscription.cancel()
            self._subscription = None
        for waiter in self._lines.clear():
            if not waiter.gone:
                waiter.result.errback(PoolFull(
                    "the coordinator stopped (a restart or reconfiguration) while you waited "
                    f"in line; retry in {PoolFull.retry_after} s"
                ))
        await self.wait_until_warm()

    async def halt_all(self) -> list[str]:
        """Stop warming and destroy every buildlet of this coordinator, leased or idle.

        For a coordinator that stops for good (``on_stop="halt"``); returns their names.
        """
        await self.stop()
        halted = []
        for lease in await self.table.all():
            if await self.table.mark_halting(lease.name):
                await self._forget(lease)
                halted.append(lease.name)
        return halted
