"""Periodic work of the farm service (heartbeats, janitors), on the master's clock."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Callable

from twisted.internet import defer, task
from twisted.python import log


class PeriodicTask:
    """Runs ``work`` every ``interval`` seconds on ``clock`` until stopped.

    A failing run is logged and the next one still happens; a run never overlaps the
    previous one (LoopingCall waits for the returned awaitable).
    """

    def __init__(
        self, name: str, interval: float, work: Callable[[], Awaitable[Any]], clock: Any
    ) -> None:
        if interval <= 0:
            raise ValueError(f"periodic task {name!r}: interval must be positive, not {interval}")
        self.name = name
        self.interval = interval
        self._work = work
        self._loop = task.LoopingCall(lambda: defer.ensureDeferred(self._run_once()))
        self._loop.clock = clock
        self._finished: defer.Deferred[Any] | None = None

    @property
    def running(self) -> bool:
        """Whether the task is scheduled."""
        return bool(self._loop.running)

    def start(self, now: bool = True) -> None:
        """Start running; the first run is at once when ``now`` is true."""
        if not self._loop.running:
            self._finished = self._loop.start(self.interval, now=now)

    def stop(self) -> defer.Deferred[Any]:
        """Stop scheduling; the result fires when a run in progress has ended."""
        if self._loop.running:
            self._loop.stop()
        finished, self._finished = self._finished, None
        return finished if finished is not None else defer.succeed(None)

    async def _run_once(self) -> None:
        try:
            await self._work()
        except Exception:
            log.err(None, f"farm periodic task {self.name!r} failed; it runs again in "
                    f"{self.interval:g} s")
