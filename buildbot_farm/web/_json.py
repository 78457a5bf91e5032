"""JSON responses and errors: every farm API answers in JSON, errors included."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.server import Request


def json_response(request: Request, body: Any, code: int = 200) -> bytes:
    """Set the status and content type on ``request``; return ``body`` encoded as JSON."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body, indent=1, sort_keys=True).encode() + b"\n"


def json_error(request: Request, code: int, message: str, **details: Any) -> bytes:
    """An error as ``{"error": message, ...details}`` with HTTP status ``code``.

    ``message`` is for a person: what was wrong and what to do about it.
    """
    return json_response(request, {"error": message, **details}, code)
