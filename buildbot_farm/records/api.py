"""The build records JSON API: ``/builds``, ``/builds/{name}``, ``/builds/{name}/{version}``.

Listings are JSON lists, as the reference build service answers them; the next page is in
a ``Link: <...>; rel="next"`` header. Records are immutable, so a record (and its
provenance) is served with a strong ETag and a one-year cache lifetime; listings change
and are never cached. :class:`BuildAlias` serves the reference's ``/build/{name}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qsl, unquote, urlencode

from twisted.web import resource
from twisted.web.server import Request

from buildbot_farm.records.config import BuildRecords, Caller, bearer_key, identify
from buildbot_farm.records.model import RESULTS, BuildRecord, InvalidRecord, parse_record
from buildbot_farm.records.provenance import NothingToAttest, Signer, signed_provenance
from buildbot_farm.records.reads import RecordReads, answer_immutable, etag_of
from buildbot_farm.records.store import (
    AlreadyDeleted,
    BadCursor,
    NoSuchRecord,
    Query,
    RecordExists,
    RecordStore,
    StoredRecord,
)
from buildbot_farm.web import ApiError, Routes, json_error, json_response
from buildbot_farm.web._request import (
    body_size,
    finite_number,
    json_body,
    query_last,
)
from buildbot_farm.web._router import RoutedResource

if TYPE_CHECKING:
    from buildbot_farm.artifacts.repository import Repository

MAX_BODY = 1024 * 1024
MAX_PAGE = 500
DEFAULT_PAGE = 100


class RecordsAPI:
    """The records API's routes; :class:`RecordsResource` serves them.

    ``store`` and ``signer`` are called per request, so a reconfigured service is followed;
    ``settings`` holds the keys; ``now`` is the clock (the master reactor's ``seconds``)
    that stamps records and tombstones; ``builder_id`` names this master in provenance;
    ``repository`` is the farm's artifact repository (or None): a posted binary URL inside
    it gets its size and digest from the repository's index. ``reads`` keeps the documents
    served (shared with :class:`~buildbot_farm.records.reads.FastRecordsResource`).
    """

    routes: Routes[RecordsAPI] = Routes("records")

    def __init__(
        self,
        store: Callable[[], RecordStore | None],
        settings: Callable[[], BuildRecords],
        signer: Callable[[], Signer | None],
        now: Callable[[], float],
        builder_id: Callable[[], str],
        repository: Callable[[], Repository | None] = lambda: None,
        reads: RecordReads | None = None,
    ) -> None:
        self._repository = repository
        self._store = store
        self._settings = settings
        self._signer = signer
        self._now = now
        self._builder_id = builder_id
        self._reads = reads or RecordReads()

    def _open_store(self) -> RecordStore:
        store = self._store()
        if store is None:
            raise ApiError(503, "the farm database is not open; see the master's log")
        return store

    @routes.route("GET", "builds")
    async def records(self, request: Request) -> bytes:
        """Records, newest first, filtered by the query; the next page in ``Link``."""
        store = self._open_store()
        args = _query_args(request)
        query, limit = _parse_query(args)
        return await self._page(request, store, query, limit, args.get("cursor"))

    @routes.route("GET", "builds/{name}")
    async def versions(self, request: Request, name: str) -> bytes:
        """The records named ``name``, as :meth:`records` lists them."""
        store = self._open_store()
        args = _query_args(request)
        args["name"] = name
        query, limit = _parse_query(args)
        return await self._page(request, store, query, limit, args.get("cursor"), name)

    async def _page(
        self,
        request: Request,
        store: RecordStore,
        query: Query,
        limit: int,
        cursor: str | None,
        name: str | None = None,
    ) -> bytes:
        try:
            records, more = await store.list(query, limit, cursor)
        except BadCursor as e:
            raise ApiError(400, str(e), {"cursor": str(e)}) from e
        if name is not None and not records and cursor is None:
            raise ApiError(404, f"no records named {name!r}")
        documents = [_with_tombstone(r) for r in records]
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if more is not None:
            request.setHeader(b"link", b'<%s>; rel="next"' % _next_page(request, more).encode())
        return b"[%s]" % b",".join(documents)

    @routes.route("GET", "builds/{name}/{version}")
    async def record(self, request: Request, name: str, version: str) -> bytes:
        """One record, immutable: a strong ETag and a year's cache lifetime."""
        stored = await self._existing(self._open_store(), name, version)
        return _immutable(request, stored.document)

    @routes.route("GET", "builds/{name}/{version}/provenance")
    async def provenance(self, request: Request, name: str, version: str) -> bytes:
        """The envelope signed when the record was stored; never signed again.

        A record stored without one (before signing at insert, or with no key loaded) is
        signed on its first request, and that envelope is kept for good.
        """
        store = self._open_store()
        stored = await self._existing(store, name, version)
        body = await store.provenance(name, version)
        if body is None:
            record = parse_record(_rich_fields(json.loads(stored.document)))
            signer = self._signer()
            if signer is None:
                raise ApiError(503, "no provenance signing key is loaded; see the master's log")
            try:
                envelope = signed_provenance(signer, record, self._builder_id())
            except NothingToAttest as e:
                raise ApiError(
                    409, f"{name} {version}: {e} (its binaries have no sha256)"
                ) from e
            body = await store.keep_provenance(name, version, envelope, self._now())
        return _immutable(request, body)

    async def _existing(self, store: RecordStore, name: str, version: str) -> StoredRecord:
        kept = self._reads.get((name, version), self._now())
        if kept is not None:
            return StoredRecord(kept[0], None)
        stored = await store.get(name, version)
        if stored is None:
            raise ApiError(404, f"no record {name} {version}")
        if stored.tombstone is not None:
            t = stored.tombstone
            raise ApiError(
                410, f"{name} {version} was deleted by {t.deleted_by}: {t.reason}",
                deleted=t.as_json(),
            )
        self._reads.put((name, version), stored.document, self._now())
        return stored

    @routes.route("POST", "builds")
    async def create(self, request: Request) -> bytes:
        """Store a posted record (an API key is needed); 409 if it exists."""
        self._caller(request, admin=False)
        store = self._open_store()
        body = _json_body(request)
        try:
            record = parse_record(body)
        except InvalidRecord as e:
            raise ApiError(
                400, f"the record has {len(e.problems)} bad field(s); fix them and post again",
                e.problems,
            ) from e
        record = await self._with_repository_digests(record)
        signer = self._signer()
        provenance = None
        if signer is not None:
            # A record that names no digest has nothing to attest: it is stored unsigned.
            with contextlib.suppress(NothingToAttest):
                provenance = signed_provenance(signer, record, self._builder_id())
        try:
            document = await store.insert(record, self._now(), provenance)
        except RecordExists as e:
            raise ApiError(409, f"{e}: records are immutable; post a new version") from e
        request.setHeader(
            b"location", f"/builds/{record.name}/{record.version}".encode()
        )
        request.setHeader(b"etag", etag_of(document))
        request.setResponseCode(201)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return document

    @routes.route("DELETE", "builds/{name}/{version}")
    async def delete(self, request: Request, name: str, version: str) -> bytes:
        """Leave a tombstone in place of a record (an admin key and a reason are needed)."""
        caller = self._caller(request, admin=True)
        store = self._open_store()
        reason = _query_args(request).get("reason")
        if reason is None and body_size(request):
            body = _json_body(request)
            reason = body.get("reason") if isinstance(body, dict) else None
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 2000:
            raise ApiError(
                400, "a deletion needs a reason: ?reason=... or a JSON body {\"reason\": ...}",
                {"reason": "required: 1-2000 characters"},
            )
        try:
            tombstone = await store.delete(
                name, version, caller.name, reason.strip(), self._now()
            )
        except NoSuchRecord as e:
            raise ApiError(404, str(e)) from e
        except AlreadyDeleted as e:
            raise ApiError(410, str(e)) from e
        self._reads.forget((name, version))
        return json_response(request, {"name": name, "version": version, **tombstone.as_json()})

    async def _with_repository_digests(self, record: BuildRecord) -> BuildRecord:
        """``record`` with the size and sha256 of its binaries in the farm's repository
        taken from the repository's index, where the poster gave none."""
        repository = self._repository()
        if repository is None:
            return record
        base = repository.public_url
        wanted = {
            b.url: unquote(b.url[len(base):]) for b in (*record.binaries, *record.byproducts)
            if b.sha256 is None and b.url.startswith(base)
        }
        if not wanted:
            return record
        indexed = await repository.index.lookup(sorted(set(wanted.values())))

        def filled(binaries: tuple[Any, ...]) -> tuple[Any, ...]:
            found = [(b, indexed.get(wanted.get(b.url, ""))) for b in binaries]
            return tuple(
                dataclasses.replace(b, size=row.size, sha256=row.sha256, path=b.path or row.path)
                if row is not None else b
                for b, row in found
            )

        return dataclasses.replace(
            record, binaries=filled(record.binaries), byproducts=filled(record.byproducts)
        )

    def _caller(self, request: Request, admin: bool) -> Caller:
        settings = self._settings()
        key = bearer_key(request.getHeader(b"authorization"))
        challenge = {b"www-authenticate": b'Bearer realm="buildbot_farm records"'}
        if key is None:
            raise ApiError(401, "send an API key as 'Authorization: Bearer KEY'",
                           headers=challenge)
        caller = identify(settings, key)
        if caller is None:
            raise ApiError(401, "this API key is not configured in BuildRecords(...)",
                           headers=challenge)
        if admin and not caller.admin:
            raise ApiError(
                403, f"key {caller.name!r} may post records; deleting needs an admin key"
            )
        return caller


class RecordsResource(RoutedResource[RecordsAPI]):
    """Serves the records API ``api``; mount it as ``builds``."""

    def __init__(self, api: RecordsAPI) -> None:
        super().__init__(RecordsAPI.routes, api, "builds")


class BuildAlias(resource.Resource):
    """``/build/{name}[/...]``: the reference service's spelling of ``/builds/{name}[/...]``.

    A path segment ``other_claims`` accepts (and ``/build`` itself) goes to ``other``
    instead: the farm's on-demand API shares the ``build`` mount, its job keys being 64 hex
    digits. Without ``other``, every request under ``/build`` is the records API's.
    """

    def __init__(
        self,
        records: resource.Resource,
        other: resource.Resource | None = None,
        other_claims: Callable[[str], bool] = lambda segment: False,
    ) -> None:
        super().__init__()
        self._records = records
        self._other = other
        self._claims = other_claims

    def getChild(self, path: bytes, request: Request) -> resource.Resource:
        """The records API for a record name, else ``other`` (the path below it unconsumed)."""
        segment = path.decode("utf-8", errors="replace")
        if request.prepath is not None and request.postpath is not None:
            request.prepath.pop()
            request.postpath.insert(0, path)
        if self._other is not None and (not segment or self._claims(segment)):
            return self._other
        return self._records

    def render(self, request: Request) -> bytes:
        """``/build`` itself: ``other``'s, or a 404 naming the paths served."""
        if self._other is not None:
            answer: bytes = self._other.render(request)
            return answer
        return json_error(request, 404, "use /build/NAME, as /builds/NAME")


def _next_page(request: Request, cursor: str) -> str:
    """The path and query of the request with ``cursor`` set to the next page's."""
    path, _, query = request.uri.decode("utf-8", errors="replace").partition("?")
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "cursor"]
    return f"{path}?{urlencode([*kept, ('cursor', cursor)])}"


def _immutable(request: Request, body: bytes) -> bytes:
    return answer_immutable(request, body, etag_of(body))


def _with_tombstone(stored: StoredRecord) -> bytes:
    if stored.tombstone is None:
        return stored.document
    document = json.loads(stored.document)
    document["deleted"] = stored.tombstone.as_json()
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _rich_fields(document: dict[str, Any]) -> dict[str, Any]:
    """The stored document without the reference's duplicate names (for re-parsing)."""
    return {k: v for k, v in document.items() if k[:1].islower()}


def _query_args(request: Request) -> dict[str, str]:
    return query_last(request)


def _parse_query(args: dict[str, str]) -> tuple[Query, int]:
    problems: dict[str, str] = {}

    def number(key: str) -> float | None:
        if key not in args:
            return None
        value = finite_number(args[key])
        if value is None:
            problems[key] = "must be UTC seconds since 1970"
        return value

    since, until = number("since"), number("until")
    limit = DEFAULT_PAGE
    if "limit" in args:
        if args["limit"].isdigit() and 1 <= int(args["limit"]) <= MAX_PAGE:
            limit = int(args["limit"])
        else:
            problems["limit"] = f"must be a whole number from 1 to {MAX_PAGE}"
    result = args.get("result")
    if result is not None and result not in RESULTS:
        problems["result"] = f"must be one of {', '.join(RESULTS)}"
    deleted = args.get("deleted", "false")
    if deleted not in ("true", "false"):
        problems["deleted"] = "must be true or false"
    if problems:
        raise ApiError(400, "bad query parameter(s)", problems)
    query = Query(
        name=args.get("name"), since=since, until=until, commit=args.get("commit"),
        result=result, include_deleted=deleted == "true",
    )
    return query, limit


def _json_body(request: Request) -> Any:
    return json_body(request, max_bytes=MAX_BODY)
