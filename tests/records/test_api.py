"""The records API's routes over loopback HTTP, against the real resource and database."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest_twisted
import treq
from twisted.web import client, server

from buildbot_farm import db
from buildbot_farm.records.config import BuildRecords
from buildbot_farm.web import FarmRoot
from tests.harness.twisted_reactor import reactor
from tests.records.farm import records_host

KEY = "api-key-0123456789"
_POOL = client.HTTPConnectionPool(reactor, persistent=False)
RECORD = {"name": "app", "version": "1", "timestamp": 1.5, "result": "success"}


async def request(method: str, url: str, **kwargs: Any) -> tuple[int, Any, Any]:
    """One request; return (status, headers, decoded JSON or None)."""
    response = await treq.request(method, url, pool=_POOL, **kwargs)
    raw = await response.content()
    return response.code, response.headers, json.loads(raw) if raw else None


@pytest_twisted.async_yield_fixture
async def builds(database: db.Database, tmp_path: Path) -> AsyncIterator[str]:
    """A configured RecordsHost mounted as ``builds``, served on a loopback port."""
    endpoint, _farm = records_host(database, reactor, str(tmp_path), "b")
    await endpoint.configure(BuildRecords(api_keys={"ci": KEY}))
    root = FarmRoot()
    root.mount("builds", endpoint.resource)
    port = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}/builds"
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_post_then_get_with_etag_and_304(builds: str) -> None:
    """A posted record is served with a strong ETag; If-None-Match with it answers 304."""
    auth = {"Authorization": f"Bearer {KEY}"}
    code, _, created = await request("POST", builds, json=RECORD, headers=auth)
    assert code == 201
    assert created["Name"] == "app"
    code, headers, fetched = await request("GET", f"{builds}/app/1")
    etag = headers.getRawHeaders("etag")[0]
    assert code == 200
    assert fetched == created
    code, _, _ = await request("GET", f"{builds}/app/1", headers={"If-None-Match": etag})
    assert code == 304
    code, _, versions = await request("GET", f"{builds}/app")
    assert code == 200
    assert [r["version"] for r in versions] == ["1"]


@pytest_twisted.ensureDeferred
async def test_bad_requests_get_clear_4xx(builds: str) -> None:
    """Unknown names and paths 404, wrong methods 405, bad JSON 400, huge bodies 413."""
    auth = {"Authorization": f"Bearer {KEY}"}
    assert (await request("GET", f"{builds}/nobody"))[0] == 404
    assert (await request("GET", f"{builds}/nobody/1"))[0] == 404
    assert (await request("GET", f"{builds}/a/b/c/d"))[0] == 404
    code, headers, _ = await request("PUT", f"{builds}/a/b")
    assert code == 405
    assert headers.getRawHeaders("allow") == ["DELETE, GET"]
    assert (await request("POST", builds, data=b"{nope", headers=auth))[0] == 400
    huge = json.dumps({**RECORD, "language": "x" * (2 * 1024 * 1024)}).encode()
    assert (await request("POST", builds, data=huge, headers=auth))[0] == 413
    code, _, answer = await request("GET", f"{builds}?limit=0&result=green&since=soon")
    assert code == 400
    assert set(answer["fields"]) == {"limit", "result", "since"}
    assert (await request("GET", f"{builds}?cursor=zzz"))[0] == 400
    assert (await request("GET", f"{builds}/app/1/provenance"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_nul_characters_are_refused_alike_on_every_backend(builds: str) -> None:
    """U+0000 in a body's string, a query value or a path answers 400 saying so, on SQLite
    (which could store it) as on PostgreSQL (which cannot), and nothing is stored."""
    auth = {"Authorization": f"Bearer {KEY}"}
    for body in ({**RECORD, "language": "go\u0000"}, {**RECORD, "name": "a\u0000b"}):
        code, _, answer = await request("POST", builds, json=body, headers=auth)
        assert code == 400, answer
        assert "NUL" in answer["error"]
    for query in ("name=a%00b", "version=%00"):
        code, _, answer = await request("GET", f"{builds}?{query}")
        assert code == 400, answer
        assert "NUL" in str(answer["fields"])
    for path in ("/a%00b", "/a%00b/1", "/app/%00"):
        code, _, answer = await request("GET", f"{builds}{path}")
        assert code == 400, answer
        assert "NUL" in answer["error"]
    assert await request("GET", builds) == (200, ANY, [])
