"""The repository over HTTP: anonymous GET/HEAD/PROPFIND, token-guarded PUT/MKCOL/DELETE.

Mounted by FarmService at ``/plugins/farm/artifacts/``. There, request bodies are received
by twisted.web before the resource runs (bodies above 100 KiB spooled to an anonymous
temporary file), then copied into the repository's own temporary file (hashing it) on the
thread pool and renamed into place. On the repository's own port (:mod:`.site`) a PUT
body arrives already streamed into the storage (:mod:`.upload`) and is only placed.
``/.farm-auth`` answers nginx's ``auth_request`` subrequests.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from twisted.web import http, resource
from twisted.web.server import Request

from buildbot_farm.artifacts import download, local_files, paths, spool, views
from buildbot_farm.artifacts.paths import RESERVED_PREFIX, Segments, UnsafePath
from buildbot_farm.artifacts.repository import Repository
from buildbot_farm.artifacts.storage import Entry, LocalStorage, StorageError
from buildbot_farm.artifacts.write_access import (
    WriteRefused,
    authorise_put,
    authorise_write,
    declared_length,
    write_target,
)
from buildbot_farm.web import respond
from buildbot_farm.web._json import json_error, json_response

AUTH_ENDPOINT = RESERVED_PREFIX + "-auth"
READ_METHODS = (b"GET", b"HEAD", b"PROPFIND", b"OPTIONS")
ALLOW = b"GET, HEAD, OPTIONS, PROPFIND, PUT, MKCOL, DELETE"
REALM = b'Basic realm="farm artifacts (user build-ID, password the build token)"'


class _Answered(Exception):
    """The response has been written; nothing more to do."""


class ArtifactResource(resource.Resource):
    """The WebDAV-speaking face of a :class:`Repository`."""

    isLeaf = True

    def __init__(self, repository: Repository) -> None:
        super().__init__()
        self.repository = repository
        storage = repository.storage
        # Where the fast way finds files (as /proc/self/fd shows them); None: not local.
        self._root = (os.path.realpath(storage.location).rstrip("/")
                      if isinstance(storage, LocalStorage) else None)

    def render(self, request: Request) -> Any:
        """Answer ``request``: a GET or HEAD of a local file the index knows at once
        (:meth:`_known_file`), every other request asynchronously through :meth:`_answer`
        (with the kit's ``respond``: a failure is a JSON 500, a database outage a 503)."""
        if request.method in (b"GET", b"HEAD"):
            answered = self._known_file(request)
            if answered is not None:
                return answered
        return respond(request, lambda: self._answer(request), "the artifact repository")

    def _known_file(self, request: Request) -> Any:
        """The answer to a GET or HEAD of a whole local file the index knows, given on the
        reactor without a thread or database trip; None to go the slow way."""
        if self._root is None or request.getHeader(b"range") is not None:
            return None
        raw = request.path.split(b"/")[1 + len(request.prepath or ()):]
        try:
            segments, trailing = paths.split_request_path(raw)
        except UnsafePath:
            return None
        path = paths.join(segments)
        known = self.repository.known.get(path)
        if trailing or known is None:
            return None
        opened = local_files.open_known(self._root, path, known)
        if opened is None:
            return None
        return local_files.send_open_file(request, *opened, known.sha256,
                                          views.content_type(segments[-1]))

    async def _answer(self, request: Request) -> bytes | None:
        raw = request.path.split(b"/")[1 + len(request.prepath or ()):]
        if raw[:1] == [AUTH_ENDPOINT.encode()]:
            return await self._auth_request(request)
        method = request.method
        if method == b"OPTIONS":
            return self._options(request)
        handler = {
            b"GET": self._get, b"HEAD": self._get, b"PROPFIND": self._propfind,
            b"PUT": self._put, b"MKCOL": self._mkcol, b"DELETE": self._delete,
        }.get(method)
        if handler is None:
            request.setHeader(b"allow", ALLOW)
            return json_error(request, 405, f"{method.decode(errors='replace')} is not supported"
                              " here", allowed=ALLOW.decode().split(", "))
        try:
            segments, trailing = paths.split_request_path(raw)
            return await handler(request, segments, trailing)
        except UnsafePath as e:
            return json_error(request, 400, f"unsafe path: {e}")
        except WriteRefused as e:
            return _refusal(request, e)
        except StorageError as e:
            return json_error(request, e.status, str(e))
        except _Answered:
            return None

    def _options(self, request: Request) -> bytes:
        request.setHeader(b"dav", b"1")
        request.setHeader(b"allow", ALLOW)
        request.setHeader(b"ms-author-via", b"DAV")
        request.setHeader(b"content-length", b"0")
        return b""

    async def _get(self, request: Request, segments: Segments, trailing: bool) -> bytes:
        entry = await self.repository.stat(segments)
        if entry is None:
            self.repository.known.drop(paths.join(segments))
            return json_error(request, 404, f"no artifact at /{paths.join(segments)}")
        if entry.is_dir:
            return await self._listing(request, segments)
        described = await self.repository.describe(segments[:-1], [entry])
        if request.setETag(f'"{described[0].sha256}"'.encode()) is http.CACHED:
            return b""
        sent = await download.send_stored(request, self.repository, segments, entry,
                                          described[0].sha256)
        if sent is None:
            raise _Answered()
        return sent

    async def _listing(self, request: Request, segments: Segments) -> bytes:
        items = await self._items(request, segments, await self.repository.list(segments))
        path = paths.join(segments)
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        args: dict[bytes, list[bytes]] = request.args or {}
        if args.get(b"format") == [b"json"] or (
            "application/json" in accept and "text/html" not in accept
        ):
            return json_response(request, views.listing_json(path, items))
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        parent = self.repository.url_for(segments[:-1], collection=True) if segments else None
        return views.listing_html(path, items, parent)

    async def _items(
        self, request: Request, segments: Segments, entries: list[Entry]
    ) -> list[views.Item]:
        described = await self.repository.describe(segments, entries)
        digests = {d.entry.name: d.sha256 for d in described}
        base = b"/" + b"/".join(request.prepath or ())
        items = []
        for entry in entries:
            full = (*segments, entry.name) if entry.name else segments
            href = base.decode().rstrip("/") + "/" + "/".join(quote(s, safe="") for s in full)
            if entry.is_dir and not href.endswith("/"):
                href += "/"
            items.append(views.Item(
                entry.name, entry.is_dir, entry.size, entry.modified, digests.get(entry.name),
                self.repository.url_for(full, collection=entry.is_dir), href,
            ))
        return items

    async def _propfind(self, request: Request, segments: Segments, trailing: bool) -> bytes:
        depth = (request.getHeader(b"depth") or b"infinity").strip().lower()
        if depth not in (b"0", b"1"):
            return json_error(request, 403, "PROPFIND with Depth: infinity is not supported;"
                              " send Depth: 0 or 1")
        entry = await self.repository.stat(segments)
        if entry is None:
            return json_error(request, 404, f"no artifact at /{paths.join(segments)}")
        if entry.is_dir:
            items = await self._items(request, segments, [Entry("", True, 0, entry.modified)])
            if depth == b"1":
                items += await self._items(
                    request, segments, await self.repository.list(segments)
                )
        else:
            items = await self._items(request, segments[:-1], [entry])
        request.setResponseCode(207)
        request.setHeader(b"content-type", b'application/xml; charset="utf-8"')
        return views.multistatus(items)

    async def _put(self, request: Request, segments: Segments, trailing: bool) -> bytes:
        headers = request.requestHeaders
        access = await authorise_put(self.repository, segments, trailing, headers,
                                     declared_length(headers))
        spooled = spool.spooled_body(request)
        if spooled is not None:
            body = spooled.finish()
            stored = await self.repository.adopt(
                segments, spooled.claim(), body.size, body.sha256, access.expected_sha256,
                access.grant,
            )
        else:
            assert request.content is not None
            # The request closes its body when the client goes away; the copy stays open
            # until it is stored.
            with spool.own_copy(request.content) as content:
                stored = await self.repository.store(
                    segments, content, access.expected_sha256, access.grant
                )
        url = self.repository.url_for(segments)
        if not stored.replaced:
            request.setHeader(b"location", url.encode())
        return json_response(
            request,
            {"path": paths.join(segments), "url": url, "size": stored.size,
             "sha256": stored.sha256},
            204 if stored.replaced else 201,
        )

    async def _mkcol(self, request: Request, segments: Segments, trailing: bool) -> bytes:
        if not segments:
            return json_error(request, 405, "the repository's root exists")
        grant = await authorise_write(
            self.repository, request.getHeader(b"authorization"), segments
        )
        assert request.content is not None
        request.content.seek(0, 2)
        if request.content.tell():
            return json_error(request, 415, "MKCOL with a body is not supported")
        await self.repository.mkcol(segments, grant)
        request.setResponseCode(201)
        return b""

    async def _delete(self, request: Request, segments: Segments, trailing: bool) -> bytes:
        await authorise_write(self.repository, request.getHeader(b"authorization"), segments)
        if not await self.repository.delete(segments):
            return json_error(request, 404, f"no artifact at /{paths.join(segments)}")
        request.setResponseCode(204)
        return b""

    async def _auth_request(self, request: Request) -> bytes:
        """nginx ``auth_request``: 204 when the original request may go ahead, else 401/403."""
        method = (request.getHeader(b"x-original-method") or b"GET").upper()
        if method in READ_METHODS:
            request.setResponseCode(204)
            return b""
        uri = (request.getHeader(b"x-original-uri") or b"").decode("latin-1")
        base = urlsplit(self.repository.public_url).path
        path = urlsplit(uri).path
        if not path.startswith(base):
            return json_error(request, 403, f"{unquote(path)} is outside {base}")
        try:
            segments, _ = write_target(
                [part.encode("latin-1") for part in path[len(base):].split("/")], 403
            )
            await authorise_write(self.repository, request.getHeader(b"authorization"),
                                  segments)
        except WriteRefused as e:
            return _refusal(request, e)
        request.setResponseCode(204)
        return b""


def _refusal(request: Request, refused: WriteRefused) -> bytes:
    """The answer to a write that may not go ahead."""
    if refused.realm:
        request.setHeader(b"www-authenticate", REALM)
    return json_error(request, refused.status, str(refused))
