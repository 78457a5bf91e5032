"""Receiving an upload body inside the kernel: socket -> pipe -> file with ``splice(2)``.

Received through Python, each byte of a body is copied from the socket into the master's
memory and copied again into the file, both by the reactor thread. ``splice`` moves the
bytes from the socket into a pipe without copying them and from the pipe into the page
cache with one copy: half the kernel time of ``recv`` + ``write``, and none of the reactor's
(the spool's hashing thread reads them back from the page cache, see :mod:`.spool`).

:func:`receive_in_thread` runs :func:`receive_exactly` in a thread of its own (one per
upload, ending with it) on a duplicate of the client's socket, waiting with ``poll`` while
the client has sent nothing new. While it runs the reactor does not read the connection
(the request paused it), so nothing else consumes the body's bytes. A client that sends
nothing for :data:`STALL_SECONDS` is given up on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python import failure

from buildbot_farm.thread_pool import in_own_thread

AVAILABLE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
STALL_SECONDS = 300.0
PIPE_SIZE = 1 << 20  # asked for; the kernel may give less (/proc/sys/fs/pipe-max-size)


class BodyEnded(Exception):
    """The client's connection ended, failed or stalled before the whole body had come."""


def receive_exactly(source: int, target: int, length: int,
                    received: Callable[[int], None]) -> None:
    """Move exactly ``length`` bytes from the non-blocking socket ``source`` to the end of
    the file ``target``, calling ``received(count)`` after each piece is in the file.

    Raises :class:`BodyEnded` when the client's side fails first, or the OSError of a
    failed write (a full disk) when the file's side does.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):  # a smaller pipe only means more rounds
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        capacity = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
        waiting = select.poll()
        waiting.register(source, select.POLLIN)
        while length:
            taken = _take(source, write_end, min(length, capacity), waiting)
            _drain(read_end, target, taken)
            length -= taken
            received(taken)
    finally:
        os.close(read_end)
        os.close(write_end)


def _take(source: int, pipe: int, most: int, waiting: Any) -> int:
    """Move up to ``most`` bytes (at least one) from the socket into the empty pipe."""
    while True:
        try:
            taken = os.splice(source, pipe, most, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
        except BlockingIOError:
            if not waiting.poll(STALL_SECONDS * 1000):
                raise BodyEnded(f"the client sent nothing for {STALL_SECONDS:.0f} s") from None
            continue
        except OSError as e:
            raise BodyEnded(f"the client's connection failed: {e.strerror}") from None
        if taken == 0:
            raise BodyEnded("the client's connection ended before the whole body came")
        return taken


def _drain(pipe: int, target: int, count: int) -> None:
    """Move the ``count`` bytes in the pipe into the file."""
    while count:
        written = os.splice(pipe, target, count, flags=os.SPLICE_F_MOVE)
        if written == 0:
            raise OSError(errno.EIO, "the file took none of the body's bytes")
        count -= written


class KernelReceive:
    """:func:`receive_exactly` from ``socket_fd`` into ``file_fd`` in a thread of its own.

    Its outcome arrives on the reactor as :attr:`done` (None, or the exception). Both
    descriptors are duplicated: the thread's stay valid whatever the reactor closes.
    """

    def __init__(self, reactor: Any, socket_fd: int, file_fd: int, length: int,
                 received: Callable[[int], None]) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()
        self._socket: socket.socket | None = socket.socket(fileno=os.dup(socket_fd))
        target = os.dup(file_fd)
        source = self._socket.fileno()

        def receive() -> None:
            try:
                receive_exactly(source, target, length, received)
            finally:
                os.close(target)

        in_own_thread(reactor, "farm-upload-splice", receive).addBoth(self._end)

    def cancel(self) -> None:
        """The connection is gone (the reactor dropped it): make the thread stop soon."""
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)

    def _end(self, outcome: failure.Failure | None) -> None:
        assert self._socket is not None
        self._socket.close()
        self._socket = None
        if isinstance(outcome, failure.Failure):
            self.done.errback(outcome)
        else:
            self.done.callback(None)
