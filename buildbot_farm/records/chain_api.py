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

from twisted.web.server import Request

from buildbot_farm.records.chain import served_entry
from buildbot_farm.records.store import RecordStore
from buildbot_farm.web import ApiError, Routes
from buildbot_farm.web._router import RoutedResource

MAX_PAGE = 1000
DEFAULT_PAGE = 500


class RecordChainAPI:
    """The chain of the records of ``store()`` (None while the database is closed)."""

    routes: Routes[RecordChainAPI] = Routes("records chain")

    def __init__(self, store: Callable[[], RecordStore | None]) -> None:
        self._store = store

    @routes.route("GET", "records-chain")
    async def page(self, request: Request) -> bytes:
        """One page of the chain, from ``after``, at most ``limit`` entries."""
        after = _number(request, b"after", 0, 0, 2**62)
        limit = _number(request, b"limit", DEFAULT_PAGE, 1, MAX_PAGE)
        store = self._store()
        if store is None:
            raise ApiError(503, "the farm database is not open; see the master's log")
        rows = await store.chain(after, limit)
        more = None
        if len(rows) == limit:
            more = f"?after={int(rows[-1]['seq'])}&limit={limit}"
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        entries = b",".join(served_entry(row) for row in rows)
        return b'{"entries":[%s],"next":%s}' % (entries, json.dumps(more).encode())


class RecordChainResource(RoutedResource[RecordChainAPI]):
    """Serves :class:`RecordChainAPI` of ``store``; mount it as ``records-chain``."""

    def __init__(self, store: Callable[[], RecordStore | None]) -> None:
        super().__init__(RecordChainAPI.routes, RecordChainAPI(store), "records-chain")


def _number(request: Request, name: bytes, default: int, low: int, high: int) -> int:
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name)
    if not values:
        return default
    text = values[-1].decode("ascii", errors="replace")
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or not low <= int(text) <= high:
        raise ApiError(400, f"{name.decode()} must be a whole number from {low} to {high}",
                       {name.decode(): f"a whole number from {low} to {high}"})
    return int(text)
