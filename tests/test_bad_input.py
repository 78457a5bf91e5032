"""Hostile input to every farm API of a real master: refused with a 4xx, never a 500.

One master runs every capability (records, on-demand builds, the coordinator, artifacts,
status, the dashboard). Each input the records issue lists has its own test; a hypothesis
run then throws generated hostile bodies and query parameters at every API.
"""

from __future__ import annotations

import base64
import http.client
import json
import sqlite3
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from buildbot_farm.demo import LocalFarm
from buildbot_farm.leases import keys
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port

pytestmark = pytest.mark.master
SECRET = "bad-input-test-coordinator-secret"
KEY, ADMIN_KEY = "bad-input-key-0123", "bad-input-admin-0123"
MIB = 1024 * 1024
MASTER_CFG = f"""
import os
from buildbot.plugins import schedulers, steps, util, worker

{LOOPBACK_MASTER}
c["services"] = [util.FarmService(
    coordinator=util.FarmCoordinator(secret={SECRET!r},
                                     pools=[util.BuildletPool("local", max_count=1)]),
    records=util.BuildRecords(api_keys={{"ci": {KEY!r}}}, admin_keys={{"ops": {ADMIN_KEY!r}}}),
    artifacts=util.ArtifactRepository(),
    on_demand=util.OnDemandBuilds(compat_timeout=1),
)]
c["workers"] = [worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"])]
c["builders"] = [util.BuilderConfig(name="tool", workernames=["local-worker"],
                                    factory=util.BuildFactory([steps.ShellCommand(command="true")]))]
c["schedulers"] = [schedulers.OnDemandScheduler(
    name="tool", builder="tool",
    parameters=[util.OnDemandChoice("os", choices=("linux", "darwin")),
                util.OnDemandList("plugins")],
)]
"""
REFERENCE = {
    "Hostname": "localhost", "Architecture": "amd64", "GoVersion": "1.1.1",
    "SourceUrl": "https://github.com/HailoOSS/build-service/commit/"
                 "53d6db9a88494e948b64415f53e1bf9da7efcc4b",
    "Version": "20130627091746", "Language": "Go",
    "Name": "com.HailoOSS.kernel.build-service", "TimeStamp": 1372346773,
}
RECORDS = "/plugins/farm/api/builds"
BUILD = "/plugins/farm/api/build"


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFarm]:
    """A running master whose farm service has every capability configured."""
    base = tmp_path_factory.mktemp("bad-input")
    config = base / "master.cfg"
    config.write_text(MASTER_CFG)
    local = LocalFarm(config, base / "farm", env={
        "FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port()),
    })
    local.create()
    try:
        local.start()
        yield local
    finally:
        local.stop()


def bearer(key: str) -> dict[str, str]:
    """The records API's authorization header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


def basic(user: str) -> dict[str, str]:
    """The coordinator's HTTP Basic header for ``user``."""
    token = base64.b64encode(f"{user}:{keys.user_key(SECRET.encode(), user)}".encode())
    return {"Authorization": "Basic " + token.decode()}


def ask(master: LocalFarm, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """One request to the master's web port: (status, content type, body)."""
    port = int(master.web_url.rstrip("/").rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("content-type") or "", response.read()
    finally:
        connection.close()


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} in an answer")


def no_lone_surrogates(value: Any) -> None:
    """Fail if any string or key in ``value`` cannot be encoded as UTF-8."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for key, item in value.items():
            no_lone_surrogates(key)
            no_lone_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            no_lone_surrogates(item)


def strict_json(body: bytes) -> Any:
    """``body`` parsed as strict JSON: UTF-8, no NaN/Infinity, no lone surrogates."""
    value = json.loads(body.decode("utf-8"), parse_constant=_refuse)
    no_lone_surrogates(value)
    return value


def refused(answer: tuple[int, str, bytes], status: int = 400) -> dict[str, Any]:
    """Check ``answer`` is ``status`` with a JSON error in the farm's shape; return it."""
    code, content_type, body = answer
    assert code == status, body[:300]
    assert content_type.startswith("application/json"), content_type
    error = strict_json(body)
    assert isinstance(error["error"], str), error
    assert error["error"], error
    return dict(error)


def cursor(value: bytes) -> str:
    """``value`` as a cursor (unpadded base64url), query-quoted."""
    return base64.urlsafe_b64encode(value).decode().rstrip("=")


def test_deeply_nested_bodies_are_refused_with_and_without_a_key(master: LocalFarm) -> None:
    """100,000 nested ``[`` to the on-demand build (no key) and to records (with a key) is 400."""
    deep = b"[" * 100_000
    assert "64" in refused(ask(master, "POST", BUILD, deep))["error"]
    assert "64" in refused(ask(master, "POST", RECORDS, deep, bearer(KEY)))["error"]
    deleted = ask(master, "DELETE", RECORDS + "/a/b", b'{"reason":' + deep, bearer(ADMIN_KEY))
    refused(deleted)


@pytest.mark.parametrize("value", [
    json.dumps({"before": 10**25}).encode(),
    json.dumps({"before": -(10**25)}).encode(),
    b'{"before": 1e400}',
    b'{"before": NaN}',
    b"[" * 2000 + b"]" * 2000,
    b'{"before": [[[[1]]]]}',
    b'{"before": "\\ud800"}',
    b"\xff\xfe",
])
def test_hostile_cursors_are_refused_without_a_key(master: LocalFarm, value: bytes) -> None:
    """Cursors with huge or non-finite numbers, deep nesting or bad text answer 400 "cursor"."""
    error = refused(ask(master, "GET", f"{RECORDS}?cursor={cursor(value)}"))
    assert "cursor" in error["error"], error


def test_a_lone_surrogate_is_refused_and_listings_stay_strict_json(master: LocalFarm) -> None:
    """``"Language": "\\ud800"`` is refused, so ``GET /builds`` stays strict JSON."""
    body = json.dumps({**REFERENCE, "Language": "\ud800"}).encode()
    assert b"\\ud800" in body
    error = refused(ask(master, "POST", RECORDS, body, bearer(KEY)))
    assert "surrogate" in error["error"]
    code, _, listing = ask(master, "GET", RECORDS)
    assert code == 200
    strict_json(listing)


@pytest.mark.parametrize("body", [
    b'{"Name": "n", "Version": "v", "TimeStamp": NaN}',
    b'{"Name": "n", "Version": "v", "TimeStamp": Infinity}',
    b'{"Name": "n", "Version": "v", "TimeStamp": -Infinity}',
    b'{"Name": "n", "Version": "v", "TimeStamp": 100000000000000000000000000}',
    b'{"Name": "n", "Version": "v", "TimeStamp": 1e400}',
    b'{"Name": "n", "Version": "v", "TimeStamp": ' + b"9" * 5000 + b"}",
    b'{"Name": "n\xff", "Version": "v"}',
    b'{"Name": "\\udfff", "Version": "v"}',
    b'{"\\ud800": 1}',
])
def test_bad_numbers_and_text_are_refused_by_records_and_on_demand(
    master: LocalFarm, body: bytes
) -> None:
    """NaN, Infinity, numbers of 2**63 or more, invalid UTF-8 and lone surrogates: 400."""
    refused(ask(master, "POST", RECORDS, body, bearer(KEY)))
    refused(ask(master, "POST", BUILD, body))


@pytest.mark.parametrize("path", [RECORDS, BUILD])
def test_ten_mebibyte_bodies_are_refused_as_too_large(master: LocalFarm, path: str) -> None:
    """A 10 MiB JSON body answers 413 before it is parsed."""
    body = b'["' + b"x" * (10 * MIB) + b'"]'
    assert "bytes" in refused(ask(master, "POST", path, body, bearer(KEY)), 413)["error"]


@pytest.mark.parametrize("path", [
    f"{RECORDS}?name=%FF", f"{RECORDS}?since=nan", f"{RECORDS}?until=1e400",
    f"{RECORDS}/n?limit=%ED%A0%80", "/plugins/farm/api/compat?os=%FF",
])
def test_bad_query_parameters_are_refused_with_their_names(master: LocalFarm, path: str) -> None:
    """Invalid UTF-8 (encoded surrogates included) and non-finite numbers name the parameter."""
    error = refused(ask(master, "GET", path))
    assert set(error["fields"]) & {"name", "since", "until", "limit", "os"}, error


def test_every_api_reports_bad_inputs_under_fields(master: LocalFarm) -> None:
    """Records, on-demand and the coordinator give per-input problems under one key."""
    record = refused(ask(master, "POST", RECORDS, b"{}", bearer(KEY)))
    parameters = refused(ask(master, "POST", BUILD, b'{"os": "plan9"}'))
    create = refused(ask(master, "POST", "/plugins/farm/coordinator/buildlet/create",
                         b"wait=x&type=local", {**basic("user-alice"),
                         "Content-Type": "application/x-www-form-urlencoded"}))
    for error in (record, parameters, create):
        assert isinstance(error["fields"], dict), error
        assert error["fields"], error
    assert "os" in parameters["fields"]
    assert "wait" in create["fields"]
    assert "parameters" not in parameters


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


_HOSTILE_TEXT = st.sampled_from([
    "\\ud800", "\\udfff", "\\ud83d", "\\u0000", "\\\\", "\u00e9", "\U0001f600", "",
])
_HOSTILE_NUMBERS = st.sampled_from([
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"9223372036854775808",
    b"-9223372036854775809", b"9" * 4400, b"0.5", b"-0", b"1", b"1e18",
])
_FIELDS = st.sampled_from([
    "Name", "Version", "TimeStamp", "Language", "SourceUrl", "BinaryUrl", "os", "plugins",
    "scheduler", "reason", "name", "version", "sha256", "binaries", "result", "commit",
])


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    """Bodies that break naive JSON handling: deep, odd numbers, bad text, large, or plain."""
    kind = draw(st.sampled_from(
        ["deep", "object", "number", "record", "bytes", "large", "valid"]))
    if kind == "deep":
        depth = draw(st.integers(60, 5000))
        return draw(st.sampled_from([b"[" * depth, _nested(depth), b"[" * depth + b"]" * depth]))
    if kind == "object":
        pairs = draw(st.lists(st.tuples(_FIELDS, _HOSTILE_TEXT), max_size=6))
        text = ",".join(f'"{k}": "{v}"' for k, v in pairs)
        return ("{" + text + "}").encode()
    if kind == "number":
        field = draw(_FIELDS)
        return b'{"%s": %s, "Name": "n", "Version": "v"}' % (field.encode(), draw(_HOSTILE_NUMBERS))
    if kind == "record":  # the reference record (a new version) with one field made hostile
        field = draw(_FIELDS)
        literal = draw(st.one_of(
            _HOSTILE_NUMBERS, _HOSTILE_TEXT.map(lambda t: f'"{t}"'.encode()),
            st.sampled_from([b"[]", b"{}", b"null", b"true", b'[{"a": 1}]', b'"x"']),
        ))
        record = {**REFERENCE, "Version": str(draw(st.integers(0, 10**9)))}
        record.pop(field, None)
        return json.dumps(record).encode()[:-1] + b', "%s": %s}' % (field.encode(), literal)
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "large":
        size = draw(st.sampled_from([MIB, 10 * MIB])) + draw(st.integers(1, 1024))
        return b'["' + b"y" * size + b'"]'
    value = draw(st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_FIELDS, inner, max_size=4),
        max_leaves=12,
    ))
    return json.dumps(value).encode()


@st.composite
def hostile_queries(draw: st.DrawFn) -> str:
    """A query string of known parameter names with hostile (percent-encoded) values."""
    names = st.sampled_from(
        ["cursor", "limit", "since", "until", "name", "commit", "result", "deleted", "reason",
         "os", "plugins", "type", "wait", "format", "version", "%FF", "%ED%A0%80"])
    values = st.one_of(
        st.binary(max_size=40).map(quote_from_bytes),
        st.sampled_from(["nan", "inf", "-1", "1e400", "9" * 30, "%ED%A0%80", "%C0%AF"]),
        st.binary(max_size=1500).map(lambda b: base64.urlsafe_b64encode(b).decode()),
        st.integers(1, 1000).map(lambda n: cursor(b"[" * n + b"]" * n)),
    )  # at most 4 values of 2,700 characters: below Twisted's 16 KiB request line
    pairs = draw(st.lists(st.tuples(names, values), max_size=4))
    return "&".join(f"{k}={v}" for k, v in pairs)


# (method, path, headers, answers JSON): every farm API that takes a body or parameters
TARGETS: list[tuple[str, str, dict[str, str], bool]] = [
    ("POST", RECORDS, bearer(KEY), True),
    ("POST", RECORDS, {}, True),
    ("GET", RECORDS, {}, True),
    ("GET", RECORDS + "/com.HailoOSS.kernel.build-service", {}, True),
    ("DELETE", RECORDS + "/n/v", bearer(ADMIN_KEY), True),
    ("POST", BUILD, {}, True),
    ("GET", BUILD + "/0123", {}, True),
    ("GET", "/plugins/farm/api/compat", {}, True),
    ("GET", "/plugins/farm/api/download/abc", {}, True),
    ("POST", "/plugins/farm/coordinator/buildlet/create",
     {**basic("user-fuzz"), "Content-Type": "application/x-www-form-urlencoded"}, True),
    ("POST", "/plugins/farm/coordinator/buildlet/register",
     {**basic("user-fuzz"), "Content-Type": "application/x-www-form-urlencoded"}, True),
    ("GET", "/plugins/farm/coordinator/buildlet/list", basic("user-fuzz"), True),
    ("GET", "/plugins/farm/status", {}, True),
    ("PUT", "/plugins/farm/artifacts/bin/x/1/f", {}, True),
    ("GET", "/plugins/farm/artifacts/", {}, False),
    ("GET", "/plugins/farm/ui/records", {}, False),
    ("POST", "/plugins/farm/ui/buildlets/destroy",
     {"Content-Type": "application/x-www-form-urlencoded"}, False),
]


@settings(max_examples=1000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(target=st.sampled_from(TARGETS), body=hostile_bodies(), query=hostile_queries())
def test_no_api_answers_a_server_error_to_hostile_input(
    master: LocalFarm, target: tuple[str, str, dict[str, str], bool], body: bytes, query: str
) -> None:
    """Whatever the body and query, every API answers below 500 in strict JSON (or UTF-8 HTML)."""
    method, path, headers, answers_json = target
    sent = body if method in ("POST", "PUT", "DELETE") else None
    try:
        code, content_type, answer = ask(master, method, f"{path}?{query}", sent, headers)
    except (http.client.HTTPException, OSError) as e:
        raise AssertionError((method, path, query, len(body), body[:100])) from e
    # compat holds a valid request for its build: 504 (not done in time) and 502 (the build
    # failed) are its documented answers about that build, not about the input
    event(f"{method} {path.rsplit('/', 1)[-1]}: {code}")
    about_the_build = path.endswith("/compat") and code in (502, 504) and b'"key"' in answer
    assert code < 500 or about_the_build, (method, path, query, body[:200], answer[:500])
    if answers_json or content_type.startswith("application/json"):
        if answer:
            strict_json(answer)
    else:
        answer.decode("utf-8")


def test_every_stored_string_is_utf8_after_the_fuzz(master: LocalFarm) -> None:
    """The farm database holds only valid UTF-8 text, and the listings are strict JSON."""
    connection = sqlite3.connect(master.master_dir / "farm.sqlite")
    connection.text_factory = bytes
    try:
        tables = [r[0].decode() for r in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        value.decode("utf-8")
    finally:
        connection.close()
    code, _, listing = ask(master, "GET", RECORDS + "?deleted=true&limit=500")
    assert code == 200
    strict_json(listing)
