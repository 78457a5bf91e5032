"""Moving the rest of a large relayed body from the agent's socket to the client's, in a
thread of its own.

A raw download through the coordinator (``/read``, ``/tgz`` with a length) is bytes the
proxy never looks at. Relayed by the reactor, every 64 KiB read costs the thread that serves
everything else a wake-up and Python's buffer handling: a 256 MiB ``/read`` ran at 0.3-0.45x
of the agent's own speed. Here a thread moves them in batches of up to ``BATCH`` bytes: one
``recv_into`` takes all that has arrived, and all of it is sent before the next read, so
the agent fills the socket meanwhile and the next read is a large one again. Batching is
what makes it fast; on this 2-core machine (Linux 6.18, loopback, issue 16) a proxied
256 MiB ``/read`` ran at:

* 0.95-1.07x of the agent's own speed with these batches (the median of 15 alternating
  rounds, four runs);
* 0.77-0.81x with ``splice(2)`` socket -> pipe -> socket (the previous relay), whose batches
  are bounded by the pipe's 1 MiB and whose per-page cost shows on loopback;
* in a stand-alone relay, 0.75-0.86x reading and sending alternately (64 KiB a call, even
  with a 4 MiB buffer), against 0.85-0.94x with these batches.

The sockets stay non-blocking (the reactor owns them, and may still be writing the
request's body to the agent); the thread waits with ``poll`` for the side it needs. A
blocking agent socket read faster still (1.05-1.15x) but could block those writes, and the
reactor with them. While the thread runs, neither socket is read by the reactor (the caller
stops reading both, and has sent everything written to the client before), so nothing else
takes their bytes or writes to the client. The thread holds duplicates of the descriptors,
so a close by the reactor meanwhile cannot hand it someone else's socket.

A lessee can make either side stop: a client that stops reading but keeps its connection, an
agent stopped in the middle of a body. So a relay in which a side moves no byte for
``STALL_LIMIT`` seconds ends (``SourceEnded`` or ``TargetGone``), and :class:`BulkRelays`
runs at most ``MOST_AT_ONCE`` of them at a time: beyond that, answers are relayed by the
reactor as small ones are, with its flow control, at no thread's cost.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from typing import Any

from twisted.internet import defer

from buildbot_farm.thread_pool import in_own_thread

AVAILABLE = hasattr(select, "poll")
BATCH = 1 << 20  # the most one read takes; the buffer each relay holds while it runs
MOST_AT_ONCE = 16  # relay threads at a time (each holds a BATCH buffer and two descriptors)
STALL_LIMIT = 120.0  # seconds a side may move no byte before the relay gives up on it
_TARGET_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ETIMEDOUT}


class SourceEnded(Exception):
    """The agent's connection ended (or failed) before the whole body had come."""


class TargetGone(Exception):
    """The client's connection closed while the body was being sent to it."""


def relay_exactly(source: int, target: int, length: int,
                  stall_limit: float = STALL_LIMIT) -> None:
    """Move exactly ``length`` bytes from socket ``source`` to socket ``target``.

    What was read is sent before ``SourceEnded`` is raised; after ``TargetGone`` nothing
    more is read. A source that sends nothing for ``stall_limit`` seconds is
    ``SourceEnded``, a target that takes nothing for as long ``TargetGone``.
    """
    with socket.socket(fileno=os.dup(source)) as agent, \
            socket.socket(fileno=os.dup(target)) as client:
        agent.setblocking(False)  # as it is; and no default timeout of Python's applies
        client.setblocking(False)
        batch = memoryview(bytearray(min(BATCH, length)))
        left = length
        while left:
            taken = _receive(agent, batch[:min(left, len(batch))], left, stall_limit)
            _send_all(client, batch[:taken], stall_limit)
            left -= taken


def _receive(agent: socket.socket, into: memoryview, left: int, stall_limit: float) -> int:
    """Read what has arrived into ``into`` (waiting for at least one byte); its count."""
    while True:
        try:
            taken = agent.recv_into(into)
        except BlockingIOError:
            if not _wait(agent.fileno(), select.POLLIN, stall_limit):
                raise SourceEnded(f"the agent sent nothing for {stall_limit:g} s, with {left} "
                                  f"bytes to come") from None
            continue
        except OSError as e:
            raise SourceEnded(f"reading from the agent failed: {e.strerror}") from None
        if not taken:
            raise SourceEnded(f"the agent's connection ended with {left} bytes to come")
        return taken


def _send_all(client: socket.socket, data: memoryview, stall_limit: float) -> None:
    sent = 0
    while sent < len(data):
        try:
            sent += client.send(data[sent:])
        except BlockingIOError:
            if not _wait(client.fileno(), select.POLLOUT, stall_limit):
                raise TargetGone(f"the client took nothing for {stall_limit:g} s") from None
        except OSError as e:
            if e.errno in _TARGET_GONE:
                raise TargetGone("the client went away") from None
            raise


def _wait(descriptor: int, event: int, limit: float) -> bool:
    """Wait up to ``limit`` seconds for ``descriptor`` to be ready for ``event`` (or to have
    an error to report); whether it became so."""
    waiting = select.poll()
    waiting.register(descriptor, event)
    return bool(waiting.poll(max(1, round(limit * 1000))))


class BulkRelays:
    """Runs relays in threads of their own, at most ``most_at_once`` at a time.

    A caller ``take``s a place before it commits an answer to a relay (when none is free,
    the reactor relays that answer), runs at most one relay with it, and gives it back when
    done. All three are called on the reactor thread.
    """

    def __init__(self, most_at_once: int = MOST_AT_ONCE, stall_limit: float = STALL_LIMIT
                 ) -> None:
        self.most_at_once = most_at_once
        self.stall_limit = stall_limit
        self.running = 0  # places taken and not given back

    def take(self) -> bool:
        """Take a place for one relay; False (taking nothing) when all are in use."""
        if self.running >= self.most_at_once:
            return False
        self.running += 1
        return True

    def give_back(self) -> None:
        """Give back a place ``take`` gave."""
        self.running -= 1

    def run(self, reactor: Any, source: int, target: int, length: int) -> defer.Deferred[None]:
        """Run ``relay_exactly`` in a thread of its own; its outcome arrives on the reactor."""
        return in_own_thread(reactor, "farm-proxy-relay", relay_exactly, source, target, length,
                             self.stall_limit)
