"""``in_thread``: the one way the farm runs blocking work off the reactor.

Buildbot's rule: blocking SDK and file-system calls only in ``thd_*`` functions, run on
the reactor's own thread pool (the master's, so its size and shutdown are Buildbot's).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from twisted.internet import defer, threads

__all__ = ["in_thread"]

_T = TypeVar("_T")


def in_thread(reactor: Any, function: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
    """Run the blocking ``function(*args)`` on ``reactor``'s thread pool.

    The Deferred (await it) fires with the result, or fails with what ``function`` raised,
    in the reactor thread.
    """
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)
