"""``WaitingLines``: the creates waiting for a full pool's buildlets, first come, first served.

One line per buildlet type, in the coordinator's memory: a waiter is a request still
connected to this coordinator, so there is nothing to keep across a restart. Each waiter
hears its place (how many are ahead of it) every time it changes. The coordinator decides
when the head of a line is served; this module only keeps the order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.python import log

from buildbot_farm.leases.model import Lease

PlaceCallback = Callable[[int], object]


@dataclass(eq=False)
class Waiter:
    """One create waiting for a buildlet: who asked, where to say its place, what it gets.

    ``result`` fires with the lease, or fails (pool still full at the deadline, the start
    failed); it is cancelled when the requester goes away. ``deadline`` is the timer (an
    ``IDelayedCall``) that ends the wait.
    """

    owner: str
    on_place: PlaceCallback
    result: defer.Deferred[Lease] = field(default_factory=defer.Deferred)
    deadline: Any = None
    place: int | None = None

    @property
    def gone(self) -> bool:
        """Whether the waiter no longer wants a buildlet (it was answered or cancelled)."""
        return bool(self.result.called)


class WaitingLines:
    """The waiting creates of each buildlet type, in the order they arrived."""

    def __init__(self) -> None:
        self._lines: dict[str, list[Waiter]] = {}

    def waiting(self, type_name: str) -> int:
        """How many creates wait for a ``type_name`` buildlet."""
        return len(self._lines.get(type_name, ()))

    def head(self, type_name: str) -> Waiter | None:
        """The waiter to serve next, or None when nobody waits."""
        line = self._lines.get(type_name)
        return line[0] if line else None

    def join(self, type_name: str, waiter: Waiter, deadline: IDelayedCall) -> None:
        """Put ``waiter`` at the end of the line; ``deadline`` is cancelled when it leaves."""
        waiter.deadline = deadline
        self._lines.setdefault(type_name, []).append(waiter)
        self._tell_places(type_name)

    def leave(self, type_name: str, waiter: Waiter) -> bool:
        """Take ``waiter`` out of the line (served, gone, or out of time); False if not in it."""
        _stop(waiter)
        line = self._lines.get(type_name, [])
        if waiter not in line:
            return False
        line.remove(waiter)
        if not line:
            del self._lines[type_name]
        self._tell_places(type_name)
        return True

    def clear(self) -> Iterator[Waiter]:
        """Empty every line, yielding each waiter that was in one."""
        lines, self._lines = self._lines, {}
        for line in lines.values():
            for waiter in line:
                _stop(waiter)
                yield waiter

    def _tell_places(self, type_name: str) -> None:
        for ahead, waiter in enumerate(self._lines.get(type_name, ())):
            if waiter.place != ahead:
                waiter.place = ahead
                try:
                    waiter.on_place(ahead)
                except Exception:
                    log.err(None, "coordinator: telling a waiter its place failed")


def _stop(waiter: Waiter) -> None:
    if waiter.deadline is not None and waiter.deadline.active():
        waiter.deadline.cancel()
