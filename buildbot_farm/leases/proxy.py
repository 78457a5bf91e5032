"""Relay from a client's request to a buildlet agent, and the agent's answer back as it is.

The request body is what twisted.web has already spooled (memory under 100 KiB, a temporary
file above); it is streamed to the agent from there over a connection of its own (HTTP/1.1,
``Connection: close``). The answer is relayed as the agent wrote it: its status, its headers
(less hop-by-hop ones) and its body byte for byte, a chunked body with its trailers
(``/exec``'s ``Process-State``, which Go's buildlet client needs) — twisted.web's
``Request`` cannot send trailers, so that body goes straight to the client's connection
(``compat.twisted_web``). The body is only scanned for where it ends, never re-framed. Flow
control works both ways: a slow client pauses the agent connection, and a client that goes
away closes it (the agent's command then waits for the client to re-attach, for the agent's
grace period). A large body with a Content-Length (a raw ``/read``) bound for a plain TCP
client does not pass through the reactor: after its first bytes, a thread of its own moves
the rest from socket to socket in large batches (``leases/bulk_relay.py``), if one of the
coordinator's relay threads is free; otherwise the reactor relays it as any other.
"""

from __future__ import annotations

import urllib.parse
from typing import IO, Any, Callable

from twisted.internet import defer, endpoints, protocol, task
from twisted.internet.abstract import isIPv6Address
from twisted.python import failure, log
from twisted.web.server import Request

from buildbot_farm.compat import twisted_web
from buildbot_farm.leases import bulk_relay
from buildbot_farm.remote.protocol import SECRET_HEADER
from buildbot_farm.web import json_error

CONNECT_TIMEOUT = 10.0
MAX_HEAD = 64 * 1024  # the agent's status line and headers, and its trailers, each at most this
SMALL_BODY = 64 * 1024  # request bodies up to this size are sent in one write
BULK_AT_LEAST = 256 * 1024  # answers with a body this large go by bulk_relay where they can
# Hop-by-hop headers (RFC 9110 7.6.1), never relayed either way.
_HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"proxy-connection", b"te", b"transfer-encoding", b"upgrade",
}
# What the proxy consumes or replaces on the way to the agent; ``expect`` because the body has
# already been read, ``trailer`` because the body is sent with a Content-Length.
_NOT_FORWARDED = _HOP_BY_HOP | {
    b"host", b"authorization", b"x-buildlet-proxy", b"content-length", b"expect", b"trailer",
    SECRET_HEADER.lower().encode(),
}
_NO_BODY_STATUSES = {204, 304}


class RelayError(Exception):
    """The agent's answer was malformed, or ended before it was complete."""


class ChunkedScanner:
    """Finds where a chunked body ends (after its last chunk and trailers), changing nothing.

    ``feed`` takes what arrived and returns how much of it belongs to the body, and, when
    ``collect`` is set, appends the data of its chunks (without the framing) to ``segments``.
    """

    def __init__(self, collect: bool = False) -> None:
        self.done = False
        self.collect = collect
        self.segments: list[bytes] = []
        self._left = 0  # bytes of chunk data still to come
        self._line = b""  # the part of a size, CRLF or trailer line received so far
        self._state = "size"
        self._trailer_bytes = 0

    def feed(self, data: bytes) -> int:
        """Scan ``data``; return how many of its bytes are the body's (all, unless it ended)."""
        at, end = 0, len(data)
        while at < end and not self.done:
            if self._state == "data":
                take = min(self._left, end - at)
                if self.collect:
                    self.segments.append(data[at:at + take])
                at += take
                self._left -= take
                if not self._left:
                    self._state = "crlf"
                continue
            newline = data.find(b"\n", at)
            stop = end if newline < 0 else newline + 1
            self._line += data[at:stop]
            at = stop
            if len(self._line) > MAX_HEAD:
                raise RelayError("the agent's chunked answer has a line longer than 64 KiB")
            if newline >= 0:
                self._line_done(self._line.rstrip(b"\r\n"))
                self._line = b""
        return at

    def _line_done(self, line: bytes) -> None:
        if self._state == "size":
            try:
                self._left = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise RelayError(f"the agent sent a bad chunk size {line[:40]!r}") from None
            if self._left < 0:
                raise RelayError(f"the agent sent a bad chunk size {line[:40]!r}")
            self._state = "data" if self._left else "trailers"
        elif self._state == "crlf":
            if line:
                raise RelayError("the agent's chunk is longer than its size said")
            self._state = "size"
        elif not line:
            self.done = True
        else:
            self._trailer_bytes += len(line)
            if self._trailer_bytes > MAX_HEAD:
                raise RelayError("the agent's trailers are longer than 64 KiB")


class _BodyPull:
    """Writes a request body from a file to the agent as fast as the connection takes it."""

    def __init__(self, source: IO[bytes], transport: Any) -> None:
        self._source: IO[bytes] | None = source
        self._transport = transport

    def resumeProducing(self) -> None:  # noqa: N802 - IPullProducer
        block = self._source.read(SMALL_BODY) if self._source is not None else b""
        if block:
            self._transport.write(block)
        else:
            self._source = None
            self._transport.unregisterProducer()

    def stopProducing(self) -> None:  # noqa: N802 - IPullProducer
        self._source = None


class _AgentAnswer(protocol.Protocol):
    """Sends the request to the agent; relays its answer to the client's ``request``."""

    transport: Any  # an ITCPTransport once connected

    def __init__(self, request: Request, head: bytes, body: IO[bytes] | None, length: int,
                 reactor: Any, relays: bulk_relay.BulkRelays) -> None:
        self._request = request
        self._reactor = reactor
        self._relays = relays
        self._head = head
        self._body = body
        self._length = length
        self.done: defer.Deferred[None] = defer.Deferred()
        self._received = b""  # the answer's head, while it is incomplete
        self._relay: Callable[[bytes], None] | None = None
        self._left: int | None = None  # body bytes still to come, when the length is known
        self._scanner: ChunkedScanner | None = None
        self._raw = False  # the chunked body goes to the client's connection as it is
        self._complete = False
        self._client_gone = False
        self._producing = False  # the agent connection is the client connection's producer
        self._bulk_to: int | None = None  # the client's socket, when the body goes by bulk_relay

    def connectionMade(self) -> None:
        if self._client_gone:
            self.transport.abortConnection()
            return
        self._request.registerProducer(self.transport, True)
        self._producing = True
        self.transport.write(self._head)
        if self._body is not None and self._length <= SMALL_BODY:
            self.transport.write(self._body.read())
        elif self._body is not None:
            self.transport.registerProducer(_BodyPull(self._body, self.transport), False)

    def client_gone(self) -> None:
        """The client went away: close the agent connection (the agent stops the command)."""
        self._client_gone = True
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        try:
            if self._relay is None:
                data = self._head_received(data)
                if self._relay is None:
                    return
            self._body_received(data)
        except RelayError as e:
            self._fail(failure.Failure(e))

    def _head_received(self, data: bytes) -> bytes:
        self._received += data
        while True:
            end = self._received.find(b"\r\n\r\n")
            if end < 0:
                if len(self._received) > MAX_HEAD:
                    raise RelayError("the agent's answer has headers longer than 64 KiB")
                return b""
            head, self._received = self._received[:end], self._received[end + 4:]
            status = self._start_answer(head)
            if status >= 200:
                rest, self._received = self._received, b""
                return rest

    def _start_answer(self, head: bytes) -> int:
        """Set the client's status and headers from the agent's head; its status code."""
        status_line, *lines = head.split(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        code_text, _, phrase = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or not code_text.isdigit():
            raise RelayError(f"the agent answered {status_line[:60]!r}, not HTTP/1.x")
        code = int(code_text)
        if code < 200:
            return code  # 100 Continue and the like: the final answer follows
        request = self._request
        request.setResponseCode(code, phrase)
        headers: dict[bytes, list[bytes]] = {}
        for line in lines:
            name, sep, value = line.partition(b":")
            if not sep or not name.strip() or name != name.strip():
                raise RelayError(f"the agent sent a malformed header line {line[:60]!r}")
            headers.setdefault(name.lower(), []).append(value.strip())
        for name, values in headers.items():
            if name not in _HOP_BY_HOP and name != b"content-length":
                request.responseHeaders.setRawHeaders(name, values)
        chunked = b"chunked" in b",".join(headers.get(b"transfer-encoding", [])).lower()
        if b"content-length" in headers and not chunked:
            try:
                self._left = int(headers[b"content-length"][0])
            except ValueError:
                raise RelayError("the agent sent a Content-Length that is not a number") from None
            request.setHeader(b"content-length", b"%d" % self._left)
            if self._left >= BULK_AT_LEAST and bulk_relay.AVAILABLE:
                self._bulk_to = twisted_web.bulk_target(request, self.transport)
        if request.method == b"HEAD" or code in _NO_BODY_STATUSES:
            self._left = 0
            self._relay = request.write
        elif chunked:
            if request.clientproto != b"HTTP/1.1":
                request.responseHeaders.removeHeader(b"trailer")  # de-chunked: no trailers
            writer = twisted_web.raw_body_writer(request)
            self._raw = writer is not None
            self._scanner = ChunkedScanner(collect=not self._raw)
            self._relay = writer or request.write
        else:  # with no Content-Length, the body ends where the agent's connection does
            self._relay = request.write
        return code

    def _body_received(self, data: bytes) -> None:
        assert self._relay is not None
        if self._scanner is not None:
            used = self._scanner.feed(data)
            if self._raw:
                self._relay(data[:used] if used < len(data) else data)
            else:
                for segment in self._scanner.segments:
                    self._relay(segment)
                self._scanner.segments.clear()
            if self._scanner.done:
                self._completed()
        elif self._left is not None:
            if data and self._left:
                self._relay(data[:self._left])
            self._left -= min(self._left, len(data))
            if not self._left:
                self._completed()
            elif self._bulk_to is not None:
                if self._relays.take():
                    self._begin_bulk(self._bulk_to)
                else:  # every relay thread is in use: the reactor relays this answer
                    self._bulk_to = None
        elif data:
            self._relay(data)

    def _begin_bulk(self, target: int) -> None:
        """Stop reading both sockets and let a thread of its own move the rest of the body."""
        self._bulk_to = None
        self._request.write(b"")  # the status line and headers, if no body byte sent them yet
        self._stop_producing()
        self.transport.stopReading()
        client: Any = self._request.transport
        client.stopReading()  # resumed by twisted.web when the request is finished
        defer.ensureDeferred(self._relay_rest(client, target))

    async def _relay_rest(self, client: Any, target: int) -> None:
        """Run the relay in the place ``_body_received`` took, and give that place back."""
        try:
            pause = 0.001
            while twisted_web.unsent_bytes(client) and not self._complete:
                await task.deferLater(self._reactor, pause)  # the head first, then the rest
                pause = min(pause * 2, 0.05)
            if self._complete:
                return
            left, self._left = self._left or 0, None
            await self._relays.run(self._reactor, self.transport.fileno(), target, left)
        except bulk_relay.TargetGone as e:
            self._client_gone = True
            client.abortConnection()
            self._fail(failure.Failure(RelayError(str(e))))
        except bulk_relay.SourceEnded as e:
            self._fail(failure.Failure(RelayError(f"the agent's answer broke off: {e}")))
        else:
            self._left = 0
            self._completed()
        finally:
            self._relays.give_back()

    def _stop_producing(self) -> None:
        if self._producing:
            self._producing = False
            self._request.unregisterProducer()

    def _completed(self) -> None:
        if self._complete:
            return
        self._complete = True
        self._stop_producing()
        if self._raw and not self._client_gone:
            twisted_web.finish_raw_body(self._request)
        self.transport.loseConnection()
        self.done.callback(None)

    def _fail(self, reason: failure.Failure) -> None:
        if self._complete:
            return
        self._complete = True
        self._stop_producing()
        self.transport.abortConnection()
        self.done.errback(reason)

    def connectionLost(self, reason: failure.Failure = protocol.connectionDone) -> None:
        if self._complete:
            return
        if self._relay is not None and self._left is None and self._scanner is None:
            self._completed()  # a body without length or chunks ends with the connection
        elif self._client_gone:
            self._fail(failure.Failure(RelayError("the client went away")))
        else:
            self._fail(failure.Failure(RelayError(
                "the agent closed the connection before its answer was complete"
                if self._relay is not None else
                f"the agent closed the connection without answering ({reason.getErrorMessage()})"
            )))


def _request_head(request: Request, host: str, port: int, secret: str, path: bytes,
                  length: int | None) -> bytes:
    raw_path, sep, query = path.partition(b"?")
    target = urllib.parse.quote(raw_path, safe="/").encode() + sep + query
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [request.method + b" " + target + b" HTTP/1.1", b"Host: " + authority.encode()]
    for name, values in request.requestHeaders.getAllRawHeaders():
        if name.lower() not in _NOT_FORWARDED:
            lines += [name + b": " + value for value in values]
    lines.append(SECRET_HEADER.encode() + b": " + secret.encode())
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def forward(request: Request, reactor: Any, base_url: str, secret: str, path: bytes,
                  relays: bulk_relay.BulkRelays) -> None:
    """Send ``request`` to the agent at ``base_url`` + ``path``; relay its answer as it is.

    A large body with a length goes by one of ``relays`` when one is free.

    Raises (after the client got part of the answer, or nothing) when the agent cannot be
    reached or its answer breaks off; ``proxy_failed`` then tells the client.
    """
    url = urllib.parse.urlsplit(base_url)
    host, port = url.hostname or "", url.port or 80
    body: IO[bytes] | None = None
    length = None
    if request.content is not None and _has_body(request):
        body = request.content
        length = body.seek(0, 2)
        body.seek(0)
    elif request.method in (b"POST", b"PUT", b"PATCH"):
        length = 0
    head = _request_head(request, host, port, secret, path, length)
    answer = _AgentAnswer(request, head, body, length or 0, reactor, relays)
    request.notifyFinish().addErrback(lambda _: answer.client_gone())
    kind = endpoints.TCP6ClientEndpoint if isIPv6Address(host) else endpoints.TCP4ClientEndpoint
    await endpoints.connectProtocol(kind(reactor, host, port, timeout=CONNECT_TIMEOUT), answer)
    await answer.done


def _has_body(request: Request) -> bool:
    if request.requestHeaders.hasHeader(b"content-length"):
        return True
    return request.requestHeaders.hasHeader(b"transfer-encoding")


def proxy_failed(request: Request, reason: failure.Failure, name: str) -> None:
    """Answer 502 when the agent could not be reached; cut a relayed answer that broke off.

    A cut answer is aborted, not closed, so that nothing (such as a last chunk) is written
    after it: the client sees it break off.
    """
    log.msg(f"coordinator: proxying to {name} failed: {reason.getErrorMessage()}")
    if request.startedWriting:
        transport: Any = request.transport  # an ITCPTransport (or TLS over one)
        if transport is not None:
            transport.abortConnection()
        return
    request.write(
        json_error(
            request,
            502,
            f"buildlet {name} did not answer: {reason.getErrorMessage()}; it may be gone, "
            f"check `buildbot-farm lease list`",
        )
    )
