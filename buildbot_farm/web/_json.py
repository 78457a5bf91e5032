"""JSON answers and the one error of the farm's APIs, with its one shape on the wire.

Every farm API answers an error as ``{"error": MESSAGE, "fields": {NAME: PROBLEM, ...}}``
(``fields`` only when named inputs were wrong), with a few further keys where an API says
so (e.g. ``key`` of an on-demand job). ``MESSAGE`` says what was wrong and what to do.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.server import Request

FIELDS = "fields"


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


def error_body(message: str, fields: dict[str, str] | None = None, /, **details: Any) -> Any:
    """The JSON value of an error: ``{"error": message, "fields": fields, **details}``."""
    return {"error": message, **({FIELDS: dict(fields)} if fields else {}), **details}


class ApiError(Exception):
    """An answer other than success: ``status``, a ``message`` for a person, per-input ``fields``.

    Raise it from any handler of any farm API; the kit (:func:`buildbot_farm.web.respond`)
    writes it in the one error shape. ``headers`` are set on the answer (``Allow``,
    ``WWW-Authenticate``, ``Retry-After``); ``details`` are further keys of the JSON body.
    """

    def __init__(
        self,
        status: int,
        message: str,
        fields: dict[str, str] | None = None,
        /,
        *,
        headers: dict[bytes, bytes] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = dict(fields or {})
        self.headers = dict(headers or {})
        self.details = details

    def answer(self, request: Request) -> bytes:
        """Set ``request``'s status and headers; return the error body."""
        for name, value in self.headers.items():
            request.setHeader(name, value)
        return json_response(
            request, error_body(self.message, self.fields, **self.details), self.status
        )


def json_error(
    request: Request, code: int, message: str, fields: dict[str, str] | None = None, /,
    **details: Any,
) -> bytes:
    """The answer of ``ApiError(code, message, fields, **details)``, for code that returns it."""
    return ApiError(code, message, fields, **details).answer(request)
