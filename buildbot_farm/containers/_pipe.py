"""A bounded pipe of byte chunks from the reactor thread to a worker thread.

The reactor side writes (``write`` returns a Deferred that fires when there is room, which is
how a worker's upload is slowed to the engine's pace); the thread side iterates. Either side
can fail the pipe, which wakes the other.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

from twisted.internet import defer

_EOF = object()


class PipeBroken(Exception):
    """The other side of the pipe gave up; the message says why."""


class ChunkPipe:
    """Chunks written in the reactor thread, read in order by one other thread."""

    def __init__(self, reactor: Any, depth: int = 8) -> None:
        self._reactor = reactor
        self._queue: queue.Queue[Any] = queue.Queue()
        self._depth = depth
        self._queued = 0
        self._waiting: list[defer.Deferred[None]] = []
        self._broken: str | None = None
        self.bytes_written = 0

    def write(self, chunk: bytes) -> defer.Deferred[None]:
        """Queue ``chunk``; the Deferred fires when the reader has room for more."""
        if self._broken is not None:
            return defer.fail(PipeBroken(self._broken))
        self._queue.put(chunk)
        self.bytes_written += len(chunk)
        self._queued += 1
        if self._queued < self._depth:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(waiter)
        return waiter

    def close(self) -> None:
        """Tell the reader that no more chunks come."""
        self._queue.put(_EOF)

    def fail(self, reason: str) -> None:
        """Break the pipe from the reactor side: the reader raises PipeBroken(reason)."""
        self._break(reason)
        self._queue.put(PipeBroken(reason))

    def reader_failed(self, reason: str) -> None:
        """Break the pipe from the reader's thread: pending and later writes fail."""
        self._reactor.callFromThread(self._break, reason)

    def __iter__(self) -> Iterator[bytes]:
        """Yield the chunks in order until the writer closes; call from the reading thread."""
        while True:
            item = self._queue.get()
            if item is _EOF:
                return
            if isinstance(item, PipeBroken):
                raise item
            self._reactor.callFromThread(self._taken)
            yield item

    def _taken(self) -> None:
        self._queued -= 1
        if self._waiting and self._queued < self._depth:
            self._waiting.pop(0).callback(None)

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.errback(PipeBroken(reason))
