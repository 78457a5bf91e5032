"""Streaming PUT bodies for the repository on its own port (see :mod:`.site`).

twisted.web normally reads a whole request body before any resource runs. A
:class:`StreamingRequest` decides as soon as the headers are in: a PUT of a file is
authorised (token, scope, declared size, digest header) while the socket is paused, and
then either refused at once (401/403/413/400, no 100 Continue, nothing written, the
connection closed) or accepted (100 Continue if asked) and its body written, as it
arrives, into a :class:`~.spool.Spool` in the storage's temporary directory: on a plain
TCP connection with a declared length, the kernel moves the body from the socket into the
file (:mod:`.kernel_receive`) while the reactor stops reading the connection. The resource
then only places the spooled file (``Repository.adopt``). Other requests are ordinary.

Lifecycle of a streamed PUT (``_state``)::

    AUTHORISING --accepted--> STREAMING --body complete--> HANDED_OVER (to the resource)
         |                        |
         +--refused--> REFUSED <--+-- over the size limit, or a write failed
"""

from __future__ import annotations

import enum
import errno
import io
from typing import Any

from twisted.internet import defer
from twisted.python import log
from twisted.python.failure import Failure
from twisted.web import server

from buildbot_farm.artifacts import kernel_receive
from buildbot_farm.artifacts.api import AUTH_ENDPOINT, REALM
from buildbot_farm.artifacts.repository import Repository
from buildbot_farm.artifacts.spool import Spool
from buildbot_farm.artifacts.write_access import WriteRefused, authorise_put, write_target
from buildbot_farm.compat import twisted_web
from buildbot_farm.web._json import json_error

LINGER_SECONDS = 5.0
READ_SIZE = 1024 * 1024


class _State(enum.Enum):
    AUTHORISING = "authorising"
    STREAMING = "streaming"
    HANDED_OVER = "handed over"
    REFUSED = "refused"


class StreamingRequest(server.Request):
    """A request that streams a PUT body into the repository's storage as it arrives.

    Used as the ``requestFactory`` of :class:`~.site.ArtifactSite`, whose ``repository``
    it reads. The resource finds the finished body with :func:`.spool.spooled_body`.
    """

    spooled_body: Spool | None = None
    _state: _State | None = None

    def gotLength(self, length: int | None) -> None:  # noqa: N802
        """Headers are in: decide whether to stream this body, and start authorising it."""
        repository = self._repository()
        target = None if repository is None or length == 0 else self._put_target()
        if repository is None or target is None:
            super().gotLength(length)
            return
        self.content = io.BytesIO()  # type: ignore[assignment]  # typeshed says None
        self._state = _State.AUTHORISING
        self._early: list[bytes] = []
        self._complete: tuple[bytes, bytes, bytes] | None = None
        self._linger: Any = None
        self._length = length
        self._receiving: kernel_receive.KernelReceive | None = None
        self._expects_continue = (self.requestHeaders.getRawHeaders(b"expect") or [b""])[
            0].lower() == b"100-continue"
        # The channel sends 100 Continue right after gotLength when this header is there;
        # this request sends it itself, only once the upload is accepted.
        self.requestHeaders.removeHeader(b"expect")
        self._socket().pauseProducing()
        decided = defer.ensureDeferred(self._authorise(repository, target, length))
        decided.addCallback(lambda _: self._accept(repository))
        decided.addErrback(lambda failure: self._refuse(*_as_refusal(failure)))

    def handleContentChunk(self, data: bytes) -> None:  # noqa: N802
        """Keep, spool or drop a piece of the body, depending on the upload's state."""
        if self._state is None:
            super().handleContentChunk(data)
        elif self._state is _State.AUTHORISING:
            self._early.append(data)
        elif self._state is _State.STREAMING:
            self._spool_chunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:  # noqa: N802
        """The whole body is in: hand the request to the resource once it is on disk."""
        if self._state is None:
            super().requestReceived(command, path, version)
        elif self._state is _State.AUTHORISING:
            self._complete = (command, path, version)
        elif self._state is _State.STREAMING:
            self._hand_over(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        """An interrupted upload leaves nothing behind."""
        if self.spooled_body is not None and self._state is not _State.HANDED_OVER:
            self.spooled_body.discard()
        if self._state is not None and self._receiving is not None:
            self._receiving.cancel()
        if self._state is not None and self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)

    def _socket(self) -> Any:
        """The TCP transport (it pauses, half-closes and aborts)."""
        return self.transport

    def _site(self) -> Any:
        return getattr(self.channel, "site", None)

    def _repository(self) -> Repository | None:
        repository = getattr(self._site(), "repository", None)
        return repository if isinstance(repository, Repository) else None

    def _put_target(self) -> bytes | None:
        # The method and path are known to the channel before the body.
        method, uri, version = twisted_web.request_line(self.channel)
        if method != b"PUT":
            return None
        raw = uri.split(b"?", 1)[0]
        if raw.split(b"/")[1:2] == [AUTH_ENDPOINT.encode()]:
            return None
        self.method, self.uri, self.clientproto = method, uri, version
        return raw

    async def _authorise(
        self, repository: Repository, raw: bytes, length: int | None
    ) -> None:
        segments, trailing = write_target(raw.split(b"/")[1:])
        await authorise_put(repository, segments, trailing, self.requestHeaders, length)

    def _accept(self, repository: Repository) -> None:
        if twisted_web.disconnected(self):
            return
        self.spooled_body = Spool(repository.storage.tmp_dir, hash_aside=True)
        self._limit = repository.config.max_upload_size
        self._state = _State.STREAMING
        # A TCP transport reads 64 KiB per turn of the reactor; larger reads of a body
        # halve the CPU an upload costs (measured with benchmarks/bench_artifacts.py).
        if hasattr(self._socket(), "bufferSize"):
            self._socket().bufferSize = READ_SIZE
        if self._expects_continue and self.clientproto == b"HTTP/1.1":
            self._socket().write(b"HTTP/1.1 100 Continue\r\n\r\n")
        early, self._early = self._early, []
        for chunk in early:
            self._spool_chunk(chunk)
        if self._state is not _State.STREAMING:
            return
        if self._complete is not None:
            self._socket().resumeProducing()
            self._hand_over(*self._complete)
        elif self._can_splice():
            self._splice_rest()
        else:
            self._socket().resumeProducing()

    def _can_splice(self) -> bool:
        return (kernel_receive.AVAILABLE and self._length is not None
                and twisted_web.plain_tcp_client(self) is not None)

    def _splice_rest(self) -> None:
        """Have the kernel move the rest of the body into the spool, the socket paused."""
        spool = self.spooled_body
        assert spool is not None
        assert self._length is not None
        rest = self._length - spool.size
        self._receiving = kernel_receive.KernelReceive(
            self._site().reactor, self._socket().fileno(), spool.fileno(), rest, spool.appended)
        self._receiving.done.addCallbacks(lambda _: self._spliced(rest), self._splice_failed)

    def _spliced(self, count: int) -> None:
        """The whole body is in the file: let the channel know, which hands the request over."""
        if self._state is not _State.STREAMING:
            return
        self._socket().resumeProducing()
        twisted_web.body_read_elsewhere(self.channel, count)

    def _splice_failed(self, failure: Failure) -> None:
        if self._state is not _State.STREAMING:
            return
        if failure.check(kernel_receive.BodyEnded):
            # Twisted then sees the connection go: connectionLost discards the spool.
            self._socket().abortConnection()
        else:
            self._refuse(*_as_refusal(failure))

    def _spool_chunk(self, data: bytes) -> None:
        spool = self.spooled_body
        assert spool is not None
        if spool.size + len(data) > self._limit:
            self._refuse(413, f"the upload is larger than {self._limit} bytes;"
                         " it was cut off there and nothing was kept")
            return
        try:
            spool.write(data)
        except OSError:
            self._refuse(*_as_refusal(Failure()))

    def _hand_over(self, command: bytes, path: bytes, version: bytes) -> None:
        spool = self.spooled_body
        assert spool is not None
        spool.finish()
        self._state = _State.HANDED_OVER
        # The resource claims the file; if it answers without doing so, it goes.
        self.notifyFinish().addBoth(lambda _: spool.discard())
        super().requestReceived(command, path, version)

    def _refuse(self, status: int, message: str, realm: bool = False) -> None:
        """Answer now, drop the rest of the body, close the connection."""
        self._state = _State.REFUSED
        self._early = []
        if self.spooled_body is not None:
            self.spooled_body.discard()
        if twisted_web.disconnected(self):
            return
        if realm:
            self.setHeader(b"www-authenticate", REALM)
        self.setHeader(b"connection", b"close")
        body = json_error(self, status, message)
        self.setHeader(b"content-length", str(len(body)).encode())
        self.write(body)
        # Close like nginx's lingering close: stop sending, read and drop what the client
        # still sends for a while, so it sees this answer rather than a reset.
        self._socket().loseWriteConnection()
        self._socket().resumeProducing()
        self._linger = self._site().reactor.callLater(
            LINGER_SECONDS, self._socket().abortConnection
        )


def _as_refusal(failure: Any) -> tuple[int, str, bool]:
    error = failure.value if failure is not None else None
    if isinstance(error, WriteRefused):
        return error.status, str(error), error.realm
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return 507, "the artifact storage is full; nothing was kept", False
    log.err(failure, "farm artifacts: streaming an upload failed")
    return 500, "internal error in the artifact repository; the master's log has the details", False
