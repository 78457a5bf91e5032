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

from typing import Callable

from twisted.internet import defer, task
from twisted.python import failure, log

from buildbot_farm.leases.model import Lease, LeaseState, LostLease
from buildbot_farm.leases.pool_keeper import PoolKeeper
from buildbot_farm.leases.pools import (
    LOST_KEPT,
    BuildletType,
    Claim,
    NoSuchBuildlet,
    NotYours,
    PoolFull,
    no_such_buildlet,
)
from buildbot_farm.leases.waiting import PlaceCallback, Waiter


class Coordinator(PoolKeeper):
    """Leases buildlets of the configured ``types`` to users.

    ``clock`` is the reactor (its ``seconds()`` is the time); ``agents`` talks to buildlet
    agents (status checks). Call :meth:`start` once the database is ready and
    :meth:`sweep` periodically (FarmService does both).
    """

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

    async def owned(self, owner: str) -> list[Lease]:
        """``owner``'s live leases."""
        return await self.table.owned_by(owner)

    async def lost_of(self, owner: str) -> list[LostLease]:
        """``owner``'s buildlets lost with their hosts (the latest remembered), newest first."""
        return await self.table.lost_of(owner)

    async def use(self, owner: str, name: str) -> Lease:
        """Check that ``owner`` may use buildlet ``name`` now, and renew its lease."""
        lease = await self.table.get(name)
        now = self._clock.seconds()
        if lease is None or lease.state is not LeaseState.LEASED:
            lost = await self.table.lost(name) if lease is None else None
            if lost is not None:
                raise NoSuchBuildlet(f"buildlet {name} was lost with {lost.reason}; "
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

    async def lose(self, names: list[str], reason: str) -> list[str]:
        """Mark the leases on buildlets ``names`` lost (their machine stopped answering):
        each is forgotten, and using it, listing its lessee's lost buildlets or looking at
        the Buildlets page says it was lost with ``reason`` (kept in the database, so a
        restarted coordinator says it too). Returns the names of the leases that were live."""
        lost = []
        for name in names:
            lease = await self.table.get(name)
            if lease is None or not await self.table.mark_halting(name):
                continue
            await self.table.mark_lost(lease, reason, self._clock.seconds(), LOST_KEPT)
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
