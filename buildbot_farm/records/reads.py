"""Fast reads of one record: its bytes and ETag kept, answered without a Deferred.

A stored record never changes, so the bytes served for it stay right for as long as it is
not deleted: :class:`RecordReads` keeps the documents most recently served (bounded in
bytes, not in objects), each with its strong ETag. A delete through this process forgets a
record at once; one made by another master sharing the database is seen within ``ttl``.

:class:`FastRecordsResource` stands in front of the records API's resource: a ``GET`` or
``HEAD`` of ``{name}/{version}`` whose bytes are kept is answered at once, in ``render``
(no Deferred, no thread, no database). On SQLite a record not kept is read on the reactor
thread from a read-only connection of its own: one lookup through the ``(name, version)``
unique index, which WAL never makes wait for the writer. Everything else (other paths,
deleted or unknown records, PostgreSQL's misses) goes to the API's resource.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import OrderedDict
from typing import Callable

from twisted.python import failure, log
from twisted.web import resource, server
from twisted.web.server import Request

from buildbot_farm import db
from buildbot_farm.compat.twisted_web import disconnected
from buildbot_farm.db._url import MEMORY
from buildbot_farm.records.store import LIVE_BODY, RecordStore, StoredRecord
from buildbot_farm.web._request import NUL
from buildbot_farm.web._router import segments_of

IMMUTABLE = b"public, max-age=31536000, immutable"
JSON = b"application/json; charset=utf-8"
Key = tuple[str, str]


def etag_of(body: bytes) -> bytes:
    """The strong ETag of ``body``: 128 bits of its sha256, quoted."""
    return b'"%s"' % hashlib.sha256(body).hexdigest()[:32].encode()


def answer_immutable(request: Request, body: bytes, etag: bytes) -> bytes:
    """Set the headers of an immutable answer; ``body``, or 304's nothing if the client has it."""
    request.setHeader(b"etag", etag)
    request.setHeader(b"cache-control", IMMUTABLE)
    request.setHeader(b"content-type", JSON)
    wanted = request.getHeader(b"if-none-match")
    if wanted and (wanted.strip() == b"*" or etag in [t.strip() for t in wanted.split(b",")]):
        request.setResponseCode(304)
        return b""
    return body


class RecordReads:
    """The documents of records recently served: at most ``capacity`` bytes, least recently
    used dropped first, each fresh for ``ttl`` seconds."""

    def __init__(self, capacity: int = 32 * 1024 * 1024, ttl: float = 60.0) -> None:
        self.capacity = capacity
        self._ttl = ttl
        self._size = 0
        self._entries: OrderedDict[Key, tuple[float, bytes, bytes]] = OrderedDict()

    @property
    def size(self) -> int:
        """The bytes of documents kept now."""
        return self._size

    def get(self, key: Key, now: float) -> tuple[bytes, bytes] | None:
        """The document and ETag kept for ``key``, if still fresh at ``now``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry[0] > self._ttl:
            self.forget(key)
            return None
        self._entries.move_to_end(key)
        return entry[1], entry[2]

    def put(self, key: Key, body: bytes, now: float) -> tuple[bytes, bytes]:
        """Keep ``body`` as ``key``'s document; return it with its ETag."""
        self.forget(key)
        etag = etag_of(body)
        if len(body) <= self.capacity:
            self._entries[key] = (now, body, etag)
            self._size += len(body)
            while self._size > self.capacity:
                _, (_, dropped, _) = self._entries.popitem(last=False)
                self._size -= len(dropped)
        return body, etag

    def forget(self, key: Key) -> None:
        """Drop ``key`` (its record was deleted)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._size -= len(entry[1])


class _SqliteReader:
    """A read-only connection to one SQLite database file, used on the reactor thread."""

    def __init__(self, database: db.Database) -> None:
        self.database = database
        self._connection: sqlite3.Connection | None = sqlite3.connect(
            f"file:{database.url.path}?mode=ro", uri=True, timeout=0, isolation_level=None,
            check_same_thread=False,
        )

    def live_document(self, name: str, version: str) -> bytes | None:
        """The document of record ``name``/``version`` if it exists and is not deleted."""
        if self._connection is None:
            return None
        row = self._connection.execute(LIVE_BODY, (name, version)).fetchone()
        if row is None or row[1] is not None:
            return None
        return str(row[0]).encode()

    def close(self) -> None:
        """Close the connection."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class FastRecordsResource(resource.Resource):
    """The records API's ``resource`` with single records answered from ``reads`` at once.

    ``store`` is the record store of the farm database now (None while it is closed);
    ``now`` the clock.
    """

    isLeaf = True

    def __init__(
        self,
        api: resource.Resource,
        reads: RecordReads,
        store: Callable[[], RecordStore | None],
        now: Callable[[], float],
    ) -> None:
        super().__init__()
        self._api = api
        self._reads = reads
        self._store = store
        self._now = now
        self._reader: _SqliteReader | None = None
        self._unreadable: db.Database | None = None

    def render(self, request: Request) -> bytes | int:
        """A kept (or, on SQLite, directly read) record now; anything else by the API.

        On PostgreSQL a record not kept is looked up (with the lookups of other requests
        waiting then) and answered from here when it is live; the API answers the rest.
        """
        if request.method in (b"GET", b"HEAD"):
            segments = segments_of(request)
            store = self._store()
            if len(segments) == 2 and all(segments) and store is not None and not any(
                NUL in segment for segment in segments  # the API refuses those
            ):
                key = (segments[0], segments[1])
                now = self._now()
                kept = self._reads.get(key, now)
                if kept is None and store.database.dialect.name == "sqlite":
                    body = self._read_sqlite(store.database, key)
                    kept = None if body is None else self._reads.put(key, body, now)
                elif kept is None:
                    # Methods with arguments, not a coroutine and closures: about half the
                    # objects per request, so the cyclic GC (whose full collections stop the
                    # reactor) runs about half as often.
                    looked_up = store.lookup(*key)
                    looked_up.addCallbacks(self._found, self._lookup_failed,
                                           callbackArgs=(request, key), errbackArgs=(request,))
                    looked_up.addErrback(log.err, "farm records: a record could not be answered")
                    return server.NOT_DONE_YET
                if kept is not None:
                    return answer_immutable(request, *kept)
        answer: bytes | int = self._api.render(request)
        return answer

    def _found(self, stored: StoredRecord | None, request: Request, key: Key) -> None:
        if stored is None or stored.tombstone is not None:
            self._not_found(request)  # the API says which (404 or 410), and why
            return
        kept = self._reads.put(key, stored.document, self._now())
        if not request.finished and not disconnected(request):  # the client may be gone
            body = answer_immutable(request, *kept)
            if body:  # as twisted.web does for render's bytes; chunked framing costs more
                request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

    def _lookup_failed(self, _: failure.Failure, request: Request) -> None:
        self._not_found(request)

    def _not_found(self, request: Request) -> None:
        """Let the API answer (it reports a failed lookup as the API does)."""
        if not request.finished and not disconnected(request):
            self._api.render(request)

    def _read_sqlite(self, database: db.Database, key: Key) -> bytes | None:
        if database.url.path == MEMORY or database is self._unreadable:
            return None
        if self._reader is None or self._reader.database is not database:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            try:
                self._reader = _SqliteReader(database)
            except sqlite3.Error as e:
                log.msg(f"farm records: no direct reads of {database.url.path}: {e}")
                self._unreadable = database
                return None
        try:
            return self._reader.live_document(*key)
        except sqlite3.Error:  # busy or gone: the API's own path says what it is
            return None
