"""Records served for caches: immutable headers, strong ETags, 304, and the fast read path."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any, cast

import pytest_twisted
import treq
from twisted.internet import defer
from twisted.web import resource
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from buildbot_farm import db
from buildbot_farm.records.model import BuildRecord
from buildbot_farm.records.reads import IMMUTABLE, FastRecordsResource, RecordReads
from buildbot_farm.records.store import RecordStore, StoredRecord
from tests.records.test_api import request
from tests.records.test_chain import ADMIN_AUTH, AUTH, Api, api, posted

__all__ = ["api"]  # the fixture, shared with test_chain


def header(headers: Headers, name: str) -> str | None:
    """The one value of header ``name`` in a treq response's headers, or None."""
    values = headers.getRawHeaders(name)
    return None if values is None else str(values[0])


async def post(api: Api, version: str) -> dict[str, object]:
    """POST app ``version``; its document as answered."""
    code, _, created = await request("POST", api.url, json=posted(version), headers=AUTH)
    assert code == 201
    return dict(created)


@pytest_twisted.ensureDeferred
async def test_a_record_is_immutable_with_a_strong_etag_and_304(api: Api) -> None:
    """A record: a year's immutable lifetime, a strong ETag, 304 for it, HEAD without body."""
    created = await post(api, "1")
    for _ in range(2):  # read from the database, then from the kept bytes: the same answer
        code, headers, fetched = await request("GET", f"{api.url}/app/1")
        assert (code, fetched) == (200, created)
        assert header(headers, "cache-control") == IMMUTABLE.decode()
        assert header(headers, "content-type") == "application/json; charset=utf-8"
        etag = header(headers, "etag")
        assert etag is not None
        assert etag.startswith('"')  # strong: no W/
    raw = await (await treq.get(f"{api.url}/app/1", persistent=False)).content()
    assert etag == f'"{hashlib.sha256(raw).hexdigest()[:32]}"'
    for wanted in (etag, f'"other", {etag}', "*"):
        code, headers, body = await request(
            "GET", f"{api.url}/app/1", headers={"If-None-Match": wanted}
        )
        assert (code, body) == (304, None)
        assert header(headers, "etag") == etag
    code, _, body = await request("GET", f"{api.url}/app/1", headers={"If-None-Match": '"x"'})
    assert (code, body) == (200, created)
    code, headers, body = await request("HEAD", f"{api.url}/app/1")
    assert (code, body) == (200, None)
    assert header(headers, "cache-control") == IMMUTABLE.decode()
    await post(api, "2")
    for _ in range(2):  # read from the database, then kept: with its length, not chunked
        response = await treq.get(f"{api.url}/app/2", persistent=False)
        assert response.length == len(await response.content()) > 0


@pytest_twisted.ensureDeferred
async def test_lists_and_tombstones_are_not_cacheable(api: Api) -> None:
    """Listings are no-store; a deleted record (kept before) answers 410, not cacheable."""
    await post(api, "1")
    await post(api, "2")
    for url in (api.url, f"{api.url}/app"):
        code, headers, _ = await request("GET", url)
        assert (code, header(headers, "cache-control")) == (200, "no-store")
    assert (await request("GET", f"{api.url}/app/2"))[0] == 200  # now kept
    code, _, _ = await request("DELETE", f"{api.url}/app/2?reason=bad", headers=ADMIN_AUTH)
    assert code == 200
    code, headers, body = await request("GET", f"{api.url}/app/2")
    assert code == 410
    assert body["deleted"]["reason"] == "bad"
    assert header(headers, "cache-control") == "no-store"
    assert header(headers, "etag") is None


@pytest_twisted.ensureDeferred
async def test_a_record_deleted_by_another_master_is_not_served(
    api: Api, database: db.Database
) -> None:
    """A record never kept here and deleted by another master answers 410 on both backends."""
    await post(api, "1")
    other = RecordStore(database)  # another master's store on the same database
    await other.delete("app", "1", "ops", "elsewhere", now=5.0)
    code, _, body = await request("GET", f"{api.url}/app/1")
    assert (code, body["deleted"]["reason"]) == (410, "elsewhere")
    assert (await request("GET", f"{api.url}/app/9"))[0] == 404


@pytest_twisted.ensureDeferred
async def test_kept_and_sqlite_records_are_answered_at_once(
    api: Api, database: db.Database
) -> None:
    """The fast path answers in ``render`` itself (no Deferred): on SQLite straight from the
    database, on PostgreSQL once the record was served (and so kept)."""
    await RecordStore(database).insert(BuildRecord(name="lib", version="1", timestamp=1.0), 2.0)
    if database.dialect.name == "postgresql":
        await request("GET", f"{api.url}/lib/1")  # the API serves it, and keeps its bytes
    fast: Any = DummyRequest([b"lib", b"1"])  # Twisted's stand-in for a Request, not one
    answer = api.endpoint.resource.render(fast)
    assert isinstance(answer, bytes)
    assert b'"name":"lib"' in answer
    assert fast.responseHeaders.getRawHeaders(b"cache-control") == [IMMUTABLE]


def test_the_kept_bytes_are_bounded() -> None:
    """At most ``capacity`` bytes: least recently used dropped first, stale ones expire."""
    reads = RecordReads(capacity=100, ttl=10)
    for n in range(5):
        reads.put(("a", str(n)), b"x" * 30, now=0)
        assert reads.size <= 100
    assert [reads.get(("a", str(n)), now=1) is None for n in range(5)] == [
        True, True, False, False, False
    ]
    reads.get(("a", "2"), now=1)  # used: now the most recent
    reads.put(("a", "5"), b"y" * 30, now=1)
    assert reads.get(("a", "3"), now=1) is None
    assert reads.get(("a", "2"), now=1) is not None
    assert reads.get(("a", "2"), now=12) is None, "a stale entry was served"
    reads.put(("big", "1"), b"z" * 101, now=1)
    assert reads.get(("big", "1"), now=1) is None
    reads.forget(("a", "5"))
    assert reads.get(("a", "5"), now=1) is None
    assert reads.size == 30


class _UnreachableStore:
    """A PostgreSQL record store whose lookups fail: its server cannot be reached."""

    database = SimpleNamespace(dialect=SimpleNamespace(name="postgresql"))

    def lookup(self, name: str, version: str) -> defer.Deferred[StoredRecord | None]:
        """Fail as the pool fails a call it cannot make."""
        return defer.fail(db.DatabaseUnavailable(f"no server for {name} {version}"))


class _Api(resource.Resource):
    """Stands in for the records API's resource: answers every request it is given."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answered: list[DummyRequest] = []

    def render(self, request: DummyRequest) -> int:
        """Answer 503, as the API does when the database cannot be reached."""
        self.answered.append(request)
        request.setResponseCode(503)
        request.finish()
        return NOT_DONE_YET


def test_a_failed_lookup_is_answered_by_the_api() -> None:
    """On PostgreSQL a record not kept is looked up; when that fails, the API answers."""
    api = _Api()
    reads = RecordReads()
    fast = FastRecordsResource(api, reads, lambda: cast(RecordStore, _UnreachableStore()),
                               lambda: 1.0)
    request: Any = DummyRequest([b"lib", b"1"])  # Twisted's stand-in for a Request, not one
    request._disconnected = False  # Request's own flag, which DummyRequest lacks
    assert fast.render(request) == NOT_DONE_YET
    assert api.answered == [request]
    assert (request.responseCode, request.finished) == (503, 1)
    assert reads.get(("lib", "1"), now=1.0) is None
