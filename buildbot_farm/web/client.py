"""HTTP clients bound to a given reactor (never the global one), for talking to agents."""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.web.client import Agent, HTTPConnectionPool


def http_client(reactor: Any, persistent: bool = True) -> HTTPClient:
    """A treq ``HTTPClient`` whose connections run on ``reactor``."""
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    agent: Any = Agent(reactor, pool=pool)  # an IAgent, but zope's implementer is opaque to mypy
    return HTTPClient(agent)
