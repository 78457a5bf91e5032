"""``in_thread``: the one way the farm runs blocking work off the reactor.

Buildbot's rule: blocking SDK and file-system calls only in ``thd_*`` functions, run on
the reactor's own thread pool (the master's, so its size and shutdown are Buildbot's).
Work that lasts as long as a transfer (a kernel copy of a large file) gets a thread of its
own instead (:func:`in_own_thread`), so that it never holds a thread of that pool.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, TypeVar

from twisted.internet import defer, threads

__all__ = ["in_own_thread", "in_thread"]

_T = TypeVar("_T")


def in_thread(reactor: Any, function: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
    """Run the blocking ``function(*args)`` on ``reactor``'s thread pool.

    The Deferred (await it) fires with the result, or fails with what ``function`` raised,
    in the reactor thread.
    """
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)


def in_own_thread(reactor: Any, name: str, function: Callable[..., _T],
                  *args: Any) -> defer.Deferred[_T]:
    """Run the blocking ``function(*args)`` in a new daemon thread called ``name``.

    The Deferred fires with the result, or fails with what ``function`` raised, in the
    reactor thread.
    """
    done: defer.Deferred[_T] = defer.Deferred()

    def run() -> None:
        try:
            result = function(*args)
        except BaseException as e:  # every outcome goes back to the reactor
            reactor.callFromThread(done.errback, e)
        else:
            reactor.callFromThread(done.callback, result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return done
