"""Sending a stored file to a client inside the kernel: ``sendfile(2)``, as nginx does.

Sent through Python, each byte of a download is read into the master's memory and written
again, both by the reactor thread: a 256 MiB download cost five times nginx's CPU.
``sendfile`` moves the bytes from the page cache to the socket without them entering the
process. :func:`send_in_thread` runs it in a thread of its own (one per download, ending
with it) on a duplicate of the client's socket, waiting with ``poll`` when the socket is
full; while it runs the reactor does not read the connection (the caller stops reading it),
so nothing else uses the socket. A client that stops reading for :data:`STALL_SECONDS`
is given up on.
"""

from __future__ import annotations

import errno
import os
import select
from typing import Any

from twisted.internet import defer

from buildbot_farm.thread_pool import in_own_thread

AVAILABLE = hasattr(os, "sendfile")
STALL_SECONDS = 300.0
_CLIENT_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN}


class ClientGone(Exception):
    """The client's connection closed, or stalled, while the file was being sent."""


def send_exactly(source: int, target: int, offset: int, length: int) -> None:
    """Send ``length`` bytes of the file ``source`` from ``offset`` to the non-blocking
    socket ``target``. Raises :class:`ClientGone`, or OSError when the file is shorter."""
    waiting = select.poll()
    waiting.register(target, select.POLLOUT)
    while length:
        try:
            sent = os.sendfile(target, source, offset, length)
        except BlockingIOError:
            if not waiting.poll(STALL_SECONDS * 1000):
                raise ClientGone(f"the client read nothing for {STALL_SECONDS:.0f} s") from None
            continue
        except OSError as e:
            if e.errno in _CLIENT_GONE:
                raise ClientGone("the client went away") from None
            raise
        if sent == 0:
            raise OSError(errno.EIO, f"the file ended {length} bytes early")
        offset += sent
        length -= sent


def send_in_thread(
    reactor: Any, source: int, socket_fd: int, offset: int, length: int
) -> defer.Deferred[None]:
    """Run :func:`send_exactly` on a duplicate of ``socket_fd`` in a thread of its own;
    its outcome arrives on the reactor. The duplicate is closed when done."""
    target = os.dup(socket_fd)

    def send() -> None:
        try:
            send_exactly(source, target, offset, length)
        finally:
            os.close(target)

    return in_own_thread(reactor, "farm-artifact-sendfile", send)
