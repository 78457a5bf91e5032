"""JSON responses and errors: every farm API answers in JSON, errors included."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.server import Request


def json_response(request: Request, body: Any, code: int = 200) -> bytes:
    """Set the status and content type on ``request``; return ``body`` encoded as JSON.

    The answer is strict JSON in UTF-8 whatever ``body`` holds: no ``NaN``/``Infinity`` (a
    ValueError, as that is a fault of the server), and a lone surrogate, which UTF-8 cannot
    carry, comes out as ``?``.
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    text = json.dumps(body, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8", "replace") + b"\n"


def json_error(request: Request, code: int, message: str, **details: Any) -> bytes:
    """An error as ``{"error": message, ...details}`` with HTTP status ``code``.

    ``message`` is for a person: what was wrong and what to do about it.
    """
    return json_response(request, {"error": message, **details}, code)
