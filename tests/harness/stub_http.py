"""Requests through treq's ``StubTreq`` (no socket), in a form mypy can check.

``StubTreq`` sets treq's request functions (``get``, ``request`` ...) on itself in its
``__init__``, where mypy does not see them; the tests call them through :func:`stub_request`.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer


def stub_request(stub: StubTreq, method: str, url: str, **kwargs: Any) -> defer.Deferred[Any]:
    """Send ``method`` ``url`` through ``stub``, with ``treq.request``'s keyword arguments;
    fire with the response."""
    return stub.request(method, url, **kwargs)  # type: ignore[attr-defined]  # see above
