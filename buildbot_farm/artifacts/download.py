"""Downloads of stored artifacts: a local file sent by :mod:`.local_files`, or an object
streamed from the S3 bucket to the client (:func:`send_stored` picks the way).

The GET to S3 is signed by botocore (on the thread pool) and sent with Twisted's own HTTP
client, so the master never blocks on it. The body is relayed as it arrives with flow control
both ways: a slow client pauses the read from S3, and memory stays flat whatever the
object's size. A Range header is passed through (If-Range is evaluated here, against the
sha256 ETag the client knows); HEAD is answered from what the repository knows already.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol
from twisted.python import failure, log
from twisted.web import http
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.server import NOT_DONE_YET, Request

from buildbot_farm.artifacts import local_files, views
from buildbot_farm.artifacts.paths import Segments
from buildbot_farm.artifacts.repository import Repository
from buildbot_farm.artifacts.s3 import S3Storage
from buildbot_farm.artifacts.storage import Entry, LocalStorage, StorageError
from buildbot_farm.compat import twisted_web
from buildbot_farm.thread_pool import in_thread
from buildbot_farm.web._json import json_error


class _Relay(protocol.Protocol):
    """Writes S3's response body into the client's request, pausing S3 when the client lags."""

    def __init__(self, request: Request, endpoint: str) -> None:
        self.request = request
        self.endpoint = endpoint
        self.client_gone = False
        self.done: defer.Deferred[None] = defer.Deferred()
        request.notifyFinish().addErrback(self._client_left)

    def _client_left(self, reason: failure.Failure) -> None:
        self.client_gone = True

    def connectionMade(self) -> None:
        """Register as the request's producer: its pauses reach the S3 connection. A client
        that left while S3 answered gets nothing: the S3 response is dropped."""
        if client_gone(self.request):
            self.client_gone = True
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self.request.registerProducer(self, True)

    def pauseProducing(self) -> None:  # noqa: N802
        """The client's buffer is full: stop reading from S3."""
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:  # noqa: N802
        """The client drained its buffer: read from S3 again."""
        self.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:  # noqa: N802
        """The client went away: drop the S3 response."""
        self.client_gone = True
        self.transport.stopProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        """Pass a piece of the object on."""
        if not self.client_gone:
            self.request.write(data)

    def connectionLost(self, reason: failure.Failure = protocol.connectionDone) -> None:
        """Finish the response, or cut the client's connection when S3 broke off."""
        if not self.client_gone:
            self.request.unregisterProducer()
            if reason.check(ResponseDone, http.PotentialDataLoss):
                self.request.finish()
            else:
                log.msg(f"farm artifacts: {self.endpoint} broke off a download"
                        f" ({reason.getErrorMessage()}); closing the client's connection")
                self.request.loseConnection()
        self.done.callback(None)


def client_gone(request: Request) -> bool:
    """Whether the client of ``request`` went away; nothing may be written or registered
    then (twisted.web has dropped the request's channel)."""
    return twisted_web.disconnected(request)


async def send_stored(
    request: Request, repository: Repository, segments: Segments, entry: Entry, sha256: str,
) -> bytes | None:
    """Answer a GET or HEAD of the stored file ``segments`` from whichever storage keeps it;
    None once the body is on its way.

    Both ways give Content-Length, Last-Modified, Range and a content type by the file's
    name. The caller has set the ETag (``"SHA256"``) and answered a matching If-None-Match.
    """
    if client_gone(request):
        return None
    storage = repository.storage
    if isinstance(storage, S3Storage):
        return await send_object(request, storage, repository.reactor, segments, entry, sha256)
    assert isinstance(storage, LocalStorage), "a storage backend without downloads"
    local = local_files.LocalFile(str(storage.path_of(segments)),
                                  defaultType=views.content_type(entry.name))
    body = local.render_GET(request)
    return None if body is NOT_DONE_YET else bytes(body)


async def send_object(
    request: Request, storage: S3Storage, reactor: Any, segments: Segments, entry: Entry,
    sha256: str,
) -> bytes | None:
    """Answer a GET or HEAD of the file ``segments`` from S3; None once streaming started.

    The caller has set the ETag (``"SHA256"``) and answered a matching If-None-Match.
    """
    etag = f'"{sha256}"'.encode()
    request.setHeader(b"accept-ranges", b"bytes")
    request.setHeader(b"content-type", views.content_type(entry.name).encode())
    if request.setLastModified(entry.modified) is http.CACHED:
        return b""
    if request.method == b"HEAD":
        request.setHeader(b"content-length", str(entry.size).encode())
        return b""
    wanted: dict[str, str] = {}
    ranges = request.getHeader(b"range")
    if_range = request.getHeader(b"if-range")
    if ranges is not None and (if_range is None or if_range.strip() == etag):
        wanted["range"] = ranges.decode("latin-1")
    try:
        url, signed = await in_thread(reactor, storage.thd_signed_get, segments, wanted)
    except StorageError as e:
        return json_error(request, e.status, str(e))
    agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    endpoint = storage.bucket.endpoint
    try:
        response: Any = await agent.request(
            b"GET", url.encode(),
            Headers({k.encode(): [v.encode("latin-1")] for k, v in signed.items()}),
        )
    except Exception as e:
        return json_error(request, 503, f"the S3 endpoint {endpoint} is unreachable"
                          f" ({type(e).__name__}); try again later")
    if response.code not in (200, 206):
        body = await readBody(response)
        if response.code == 404:
            return json_error(request, 404, f"no artifact at /{'/'.join(segments)}")
        if response.code == 416:
            request.setResponseCode(416)
            for value in response.headers.getRawHeaders(b"content-range") or []:
                request.setHeader(b"content-range", value)
            return b""
        refusal = storage.refusal(response.code, segments, body)
        return json_error(request, refusal.status, str(refusal))
    request.setResponseCode(response.code)
    for value in response.headers.getRawHeaders(b"content-range") or []:
        request.setHeader(b"content-range", value)
    if response.length is not UNKNOWN_LENGTH:
        request.setHeader(b"content-length", str(response.length).encode())
    relay = _Relay(request, endpoint)
    response.deliverBody(relay)
    await relay.done
    return None
