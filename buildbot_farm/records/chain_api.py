"""``GET /records-chain``: the hash chain of build records and tombstones, in chain order.

``?after=SEQ`` starts after entry SEQ (0: from the first), ``?limit=N`` (1-1000) bounds a
page. The answer is ``{"entries": [...], "next": "?after=...&limit=..."}`` (``next`` is null
on the last page); each entry carries its seq, kind, name, version, previous hash, hash and
content (see :func:`buildbot_farm.records.chain.served_entry`). ``buildbot-farm verify
--chain URL`` walks it.
"""

from __future__ import annotations

import json
from typing import Callable

from twisted.internet import defer
from twisted.python import failure, log
from twisted.web import resource, server
from twisted.web.server import Request

from buildbot_farm import db
from buildbot_farm.records.chain import served_entry
from buildbot_farm.records.store import RecordStore
from buildbot_farm.web import json_error

MAX_PAGE = 1000
DEFAULT_PAGE = 500


class _BadQuery(Exception):
    """A query parameter that is not a number in range."""


class RecordChainResource(resource.Resource):
    """Serves the chain of the records of ``store()`` (None while the database is closed)."""

    isLeaf = True

    def __init__(self, store: Callable[[], RecordStore | None]) -> None:
        super().__init__()
        self._store = store

    def render_GET(self, request: Request) -> int:
        """Answer one page of the chain once the database has."""
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = defer.ensureDeferred(self._page(request))
        d.addErrback(self._failed, request)

        def deliver(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        d.addCallback(deliver)
        d.addErrback(log.err, "farm records chain: could not send an answer")
        return server.NOT_DONE_YET

    async def _page(self, request: Request) -> bytes:
        after = _number(request, b"after", 0, 0, 2**62)
        limit = _number(request, b"limit", DEFAULT_PAGE, 1, MAX_PAGE)
        store = self._store()
        if store is None:
            return json_error(request, 503, "the farm database is not open; see the master's log")
        rows = await store.chain(after, limit)
        more = None
        if len(rows) == limit:
            more = f"?after={int(rows[-1]['seq'])}&limit={limit}"
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        entries = b",".join(served_entry(row) for row in rows)
        return b'{"entries":[%s],"next":%s}' % (entries, json.dumps(more).encode())

    def _failed(self, reason: failure.Failure, request: Request) -> bytes:
        if reason.check(_BadQuery):
            return json_error(request, 400, str(reason.value))
        if reason.check(db.DatabaseError):
            return json_error(request, 503, f"the farm database failed: {reason.value}")
        log.err(reason, "farm records chain failed")
        return json_error(request, 500, "the records chain failed; the master's log has the cause")


def _number(request: Request, name: bytes, default: int, low: int, high: int) -> int:
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name)
    if not values:
        return default
    text = values[-1].decode("ascii", errors="replace")
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or not low <= int(text) <= high:
        raise _BadQuery(f"{name.decode()} must be a whole number from {low} to {high}")
    return int(text)
