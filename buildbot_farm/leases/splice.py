"""Moving a relayed body from the agent's socket to the client's inside the kernel.

A raw download through the coordinator (``/read``, ``/tgz`` with a length) is bytes the
proxy never looks at. Copied through Python, each byte is received into the coordinator's
memory and sent again, and the reactor thread does both: a 256 MiB ``/read`` ran at 0.3-0.45x
of the agent's own speed. Linux's ``splice(2)`` moves the bytes socket -> pipe -> socket
without them entering the process, so the relay runs at nearly the speed of the agent.

``splice_exactly`` runs in a thread of its own (one per spliced answer, ending with it) on
non-blocking sockets, waiting with ``poll`` for whichever side must move next. While it runs,
neither socket is read by the reactor (the caller stops reading both), so nothing else can
consume, or close, the descriptors it uses.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
from typing import Any

from twisted.internet import defer

from buildbot_farm.thread_pool import in_own_thread

AVAILABLE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
PIPE_SIZE = 1 << 20  # asked for; the kernel may give less (/proc/sys/fs/pipe-max-size)
_TARGET_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN}


class SourceEnded(Exception):
    """The agent's connection ended (or failed) before the whole body had come."""


class TargetGone(Exception):
    """The client's connection closed while the body was being sent to it."""


def splice_exactly(source: int, target: int, length: int) -> None:
    """Move exactly ``length`` bytes from socket ``source`` to socket ``target``.

    Raises ``SourceEnded`` or ``TargetGone``; either way nothing more is moved.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        with contextlib.suppress(OSError):  # a smaller pipe only means more rounds
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        capacity = fcntl.fcntl(write_end, fcntl.F_GETPIPE_SZ)
        _pump(source, target, length, read_end, write_end, capacity)
    finally:
        os.close(read_end)
        os.close(write_end)


def _pump(source: int, target: int, left: int, read_end: int, write_end: int,
          capacity: int) -> None:
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    in_pipe = 0
    ended = ""  # why the source ended early; what it sent still goes to the target
    while left or in_pipe:
        if ended and not in_pipe:
            raise SourceEnded(ended)
        moved = False
        if left and in_pipe < capacity and not ended:
            try:
                taken = os.splice(source, write_end, min(left, capacity - in_pipe), flags=flags)
            except BlockingIOError:
                taken = -1
            except OSError as e:
                taken, ended = -1, f"reading from the agent failed: {e.strerror}"
            if taken == 0:
                ended = f"the agent's connection ended with {left} bytes to come"
            moved = bool(ended)
            if taken > 0:
                left -= taken
                in_pipe += taken
                moved = True
        if in_pipe:
            try:
                sent = os.splice(read_end, target, in_pipe, flags=flags)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                if e.errno in _TARGET_GONE:
                    raise TargetGone("the client went away") from None
                raise
            in_pipe -= sent
            moved = moved or sent > 0
        if not moved:
            _wait(source if left and in_pipe < capacity and not ended else -1,
                  target if in_pipe else -1)


def _wait(source: int, target: int) -> None:
    """Block until the source can be read or the target written (whichever is asked)."""
    waiting = select.poll()
    if source >= 0:
        waiting.register(source, select.POLLIN)
    if target >= 0:
        waiting.register(target, select.POLLOUT)
    waiting.poll()


def splice_in_thread(reactor: Any, source: int, target: int, length: int) -> defer.Deferred[None]:
    """Run ``splice_exactly`` in a thread of its own; its outcome arrives on the reactor."""
    return in_own_thread(reactor, "farm-proxy-splice", splice_exactly, source, target, length)
