"""The request kit's limits at their edges, without a server (tests/test_bad_input.py has one)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from twisted.web.test.requesthelper import DummyRequest

from buildbot_farm.web import ApiError, json_response
from buildbot_farm.web._request import (
    MAX_DEPTH,
    decode_token,
    finite_number,
    nesting_depth,
    parse_json,
    query_args,
)


def fake_request() -> Any:
    """Twisted's own stand-in for a request (it records the status code set)."""
    return DummyRequest([b""])


def test_nesting_depth_skips_brackets_inside_strings() -> None:
    """Brackets in strings, escaped quotes included, do not count as nesting."""
    assert nesting_depth(b'[{"a": "[[[{{\\"]]"}, ["x"]]') == 2
    assert nesting_depth(b'"[[[["') == 0
    assert nesting_depth(b"1") == 0


def test_the_depth_limit_is_exact() -> None:
    """MAX_DEPTH levels parse; one more is refused before parsing, with 400."""
    assert parse_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    with pytest.raises(ApiError) as refused:
        parse_json(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert refused.value.status == 400


@pytest.mark.parametrize("text", [b"9223372036854775807", b"-9223372036854775807", b"1e18",
                                  b"0.5", b"-0"])
def test_numbers_below_two_to_the_63_are_accepted(text: bytes) -> None:
    """Numbers smaller than 2**63 in size come through as numbers."""
    assert parse_json(text) == json.loads(text)


@pytest.mark.parametrize("text", [b"9223372036854775808", b"-9223372036854775808", b"1e19",
                                  b"1e400", b"NaN", b"Infinity", b"-Infinity", b"9" * 5000])
def test_large_and_non_finite_numbers_are_refused(text: bytes) -> None:
    """2**63 and beyond, NaN and the infinities answer 400."""
    with pytest.raises(ApiError) as refused:
        parse_json(text)
    assert refused.value.status == 400


def test_surrogate_pairs_pass_and_lone_surrogates_do_not() -> None:
    """An escaped pair is one character; a lone surrogate, as value or key, is refused."""
    assert parse_json(b'"\\ud83d\\ude00"') == "\U0001f600"
    for text in (b'"\\ud800"', b'{"\\udfff": 1}', b'[["a", "\\ud83d"]]'):
        with pytest.raises(ApiError, match="surrogate"):
            parse_json(text)


def test_invalid_utf8_and_oversize_bodies_are_refused() -> None:
    """Bytes that are not UTF-8 answer 400; a body over the limit 413, before decoding."""
    with pytest.raises(ApiError, match="UTF-8"):
        parse_json(b'"\xed\xa0\x80"')
    with pytest.raises(ApiError) as refused:
        parse_json(b"\xff" * 11, max_bytes=10)
    assert refused.value.status == 413


def test_cursors_hold_only_shallow_json() -> None:
    """A cursor is base64url JSON at most two deep; anything else names the cursor."""
    token = base64.urlsafe_b64encode(b'{"before": 7}').decode().rstrip("=")
    assert decode_token(token) == {"before": 7}
    for bad in ("!!!", base64.urlsafe_b64encode(b"[[[1]]]").decode(), "A" * 600):
        with pytest.raises(ApiError):
            decode_token(bad)


def test_finite_number_refuses_what_float_accepts() -> None:
    """``nan``, ``inf`` and huge values are not numbers of seconds."""
    assert finite_number("12.5") == 12.5
    assert [finite_number(t) for t in ("nan", "inf", "-inf", "1e400", "1e19", "x")] == [None] * 6


def test_the_error_shape_and_strict_output() -> None:
    """A refusal is ``{"error", "fields", ...}``; a lone surrogate never reaches the output."""
    request = fake_request()
    body = ApiError(400, "bad", {"os": "not one of linux"}, key="k").answer(request)
    assert request.responseCode == 400
    assert json.loads(body) == {"error": "bad", "fields": {"os": "not one of linux"}, "key": "k"}
    out = json_response(fake_request(), {"x": "a\ud800b"})
    assert json.loads(out.decode("utf-8")) == {"x": "a?b"}
    with pytest.raises(ValueError):
        json_response(fake_request(), {"x": float("nan")})


def test_nul_characters_are_refused_in_bodies_and_queries() -> None:
    """U+0000 in a string or key of a body, or in a query value, is refused with 400."""
    for text in (b'"a\\u0000"', b'{"\\u0000": 1}', b'[["x", "\\u0000"]]'):
        with pytest.raises(ApiError, match="NUL") as refused:
            parse_json(text)
        assert refused.value.status == 400
    request = fake_request()
    request.args = {b"name": [b"a\x00b"]}
    with pytest.raises(ApiError) as refused:
        query_args(request)
    assert refused.value.fields == {"name": "must not hold NUL (%00)"}
