"""The request kit: what every farm API reads from a request, read with limits.

JSON bodies, cursors and query parameters go through here, so that hostile input gets the
same 4xx answer from every API instead of a server error:

* a body larger than its API's limit is refused (413) before it is parsed;
* text must be strict UTF-8, and no string (after JSON unescaping) may hold a lone surrogate,
  which strict JSON parsers cannot read back, nor a NUL character (U+0000), which PostgreSQL
  cannot store in text (so the farm answers alike on every backend);
* nesting deeper than :data:`MAX_DEPTH` is refused before the JSON parser recurses into it;
* ``NaN``, ``Infinity`` and numbers beyond ``±2**63`` are refused (databases cannot store them).

Every refusal is an :class:`~buildbot_farm.web.ApiError`, which the kit answers in the one
error shape of the farm's APIs: ``{"error": MESSAGE, "fields": {NAME: PROBLEM, ...}}``, where
``fields`` (present only when a named input was wrong) says what is wrong with each input.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from itertools import accumulate
from typing import Any

from twisted.web.server import Request

from buildbot_farm.web._json import ApiError

MAX_BODY = 1024 * 1024
MAX_DEPTH = 64
MAX_NUMBER = 2**63
MAX_QUERY_VALUE = 16 * 1024
MAX_CURSOR = 512

# A JSON string (quotes included), unrolled so that long strings do not backtrack.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
NUL = "\x00"  # the one character PostgreSQL cannot store in text
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text ``raw`` (strings skipped)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    return max(accumulate(_DEPTH_STEP[b] for b in brackets))


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a surrogate code point not part of a pair (not valid UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send a finite number")


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > 19 or abs(int(text)) >= MAX_NUMBER:
        raise ValueError(f"the number {text[:40]} is too large; numbers are below 2**63")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or abs(value) >= MAX_NUMBER:
        raise ValueError(f"the number {text[:40]} is too large; numbers are below 2**63")
    return value


def _check_strings(value: Any, what: str) -> None:
    """Refuse lone surrogates and NUL in every string and key of ``value`` (depth bounded)."""
    if isinstance(value, str):
        if has_lone_surrogate(value):
            raise ApiError(400, f"{what} holds a lone surrogate (\\ud800-\\udfff not in a"
                             " pair), which is not Unicode text; send valid UTF-16 pairs")
        if NUL in value:
            raise ApiError(400, f"{what} holds a NUL character (\\u0000), which the farm "
                             "cannot store; send the text without it")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, what)
            _check_strings(item, what)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, what)


def parse_json(
    raw: bytes, *, what: str = "the body", max_bytes: int = MAX_BODY, max_depth: int = MAX_DEPTH
) -> Any:
    """``raw`` as JSON, within the limits the module describes; else :class:`ApiError`."""
    if len(raw) > max_bytes:
        raise ApiError(413, f"{what} is {len(raw)} bytes; at most {max_bytes} are accepted")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"{what} is not UTF-8 (byte {e.start}); send UTF-8 JSON") from e
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise ApiError(
            400, f"{what} nests arrays/objects {depth} deep; at most {max_depth} are accepted"
        )
    try:
        value = json.loads(
            text, parse_int=_integer, parse_float=_float, parse_constant=_refuse_constant
        )
    except ValueError as e:
        raise ApiError(400, f"{what} is not JSON the farm accepts: {e}") from e
    _check_strings(value, what)
    return value


def body_size(request: Request) -> int:
    """The size of ``request``'s body in bytes (0 when it has none)."""
    content = request.content
    if content is None:
        return 0
    content.seek(0, 2)
    size = content.tell()
    content.seek(0)
    return size


def json_body(request: Request, *, max_bytes: int = MAX_BODY, empty: Any = None) -> Any:
    """The JSON body of ``request``; ``empty`` when there is none (None: a body is required)."""
    size = body_size(request)
    if size > max_bytes:
        raise ApiError(413, f"the body is {size} bytes; at most {max_bytes} are accepted")
    if size == 0 or request.content is None:
        if empty is None:
            raise ApiError(400, "send a JSON body")
        return empty
    return parse_json(request.content.read(), max_bytes=max_bytes)


def json_object_body(
    request: Request, *, max_bytes: int = MAX_BODY, empty: dict[str, Any] | None = None
) -> dict[str, Any]:
    """:func:`json_body` that must be a JSON object."""
    value = json_body(request, max_bytes=max_bytes, empty=empty)
    if not isinstance(value, dict):
        raise ApiError(400, "the body must be a JSON object")
    return value


def _text(raw: bytes, field: str, max_length: int) -> str:
    if len(raw) > max_length:
        raise ApiError(400, f"{field[:100]!r} is too long", {field[:100]: f"at most {max_length}"
                                                                 " bytes"})
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, "a query or form value is not UTF-8",
                         {field[:100]: "must be UTF-8 text"}) from e
    if NUL in text:
        raise ApiError(400, "a query or form value holds a NUL character (%00)",
                       {field[:100]: "must not hold NUL (%00)"})
    return text


def query_args(request: Request, *, max_length: int = MAX_QUERY_VALUE) -> dict[str, list[str]]:
    """The query (and form) parameters of ``request`` as strict UTF-8 text, every value."""
    args: dict[bytes, list[bytes]] = request.args or {}
    decoded: dict[str, list[str]] = {}
    for key, values in args.items():
        name = _text(key, key.decode("utf-8", "replace"), max_length)
        decoded[name] = [_text(v, name, max_length) for v in values]
    return decoded


def query_last(request: Request, *, max_length: int = MAX_QUERY_VALUE) -> dict[str, str]:
    """:func:`query_args` keeping the last value of each parameter."""
    return {k: v[-1] for k, v in query_args(request, max_length=max_length).items() if v}


def finite_number(text: str) -> float | None:
    """``text`` as a finite number below ``2**63`` in size, or None if it is not one."""
    try:
        return _float(text)
    except ValueError:
        return None


def decode_token(token: str, *, what: str = "cursor", max_bytes: int = MAX_CURSOR) -> Any:
    """The JSON inside an unpadded base64url ``token`` (a cursor); else :class:`ApiError`."""
    if len(token) > max_bytes:
        raise ApiError(400, f"the {what} is too long", {what: f"at most {max_bytes} characters"})
    try:
        raw = base64.urlsafe_b64decode((token + "=" * (-len(token) % 4)).encode("ascii"))
    except (ValueError, binascii.Error) as e:
        raise ApiError(400, f"the {what} is not base64url", {what: "not base64url"}) from e
    return parse_json(raw, what=f"the {what}", max_bytes=max_bytes, max_depth=2)
