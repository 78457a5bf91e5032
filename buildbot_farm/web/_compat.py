"""Twisted internals the farm's HTTP kit relies on, in one place (each has a tripwire test).

``tests/test_web_kit.py`` fails loudly when a Twisted release changes any of them.
"""

from __future__ import annotations

from twisted.web.server import Request


def disconnected(request: Request) -> bool:
    """Whether the client of ``request`` hung up before the answer was finished.

    Twisted has no public way to ask this: ``notifyFinish()`` tells it only as a callback,
    and ``request.finished`` stays false for a client that went away. ``Request`` keeps it in
    the private ``_disconnected`` attribute (set by ``connectionLost``); writing to such a
    request would only log a traceback, so the kit checks this before every write.
    """
    return bool(request._disconnected)
