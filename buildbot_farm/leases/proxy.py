"""Streaming forwarder from a client's request to a buildlet agent, and the answer back.

The request body is what twisted.web has already spooled (memory under 100 KiB, a temporary
file above); it is streamed to the agent from there. The answer is streamed to the client
as the agent produces it, with flow control both ways: a slow client pauses the agent
connection, and a client that goes away closes it (the agent's command then waits for the
client to re-attach, for the agent's grace period).
"""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet import defer, protocol
from twisted.python import failure, log
from twisted.web import client, http
from twisted.web.server import Request

from buildbot_farm.leases.agent_client import SECRET_HEADER
from buildbot_farm.web import json_error

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the proxy itself consumes or replaces.
_NOT_FORWARDED = {
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"host", b"authorization",
    b"x-buildlet-proxy", b"content-length", SECRET_HEADER.lower().encode(),
}


class _Relay(protocol.Protocol):
    """Writes the agent's answer to the client as it arrives, pausing the agent when needed."""

    def __init__(self, request: Request, done: defer.Deferred[None]) -> None:
        self._request = request
        self._done = done

    def connectionMade(self) -> None:
        self._request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        if not self._request.finished and not getattr(self._request, "_disconnected", False):
            self._request.write(data)

    def connectionLost(self, reason: failure.Failure = protocol.connectionDone) -> None:
        if self._request.channel is not None:  # None once the client has gone
            self._request.unregisterProducer()
        if reason.check(client.ResponseDone, http.PotentialDataLoss):
            self._done.callback(None)
        else:
            self._done.errback(reason)


async def forward(
    request: Request, http_client: Any, base_url: str, secret: str, path: bytes
) -> None:
    """Send ``request`` to the agent at ``base_url`` + ``path`` and stream its answer back."""
    headers = {
        name: values
        for name, values in request.requestHeaders.getAllRawHeaders()
        if name.lower() not in _NOT_FORWARDED
    }
    headers[SECRET_HEADER.encode()] = [secret.encode()]
    body = None
    if request.content is not None and _has_body(request):
        request.content.seek(0)
        # twisted.web spools large bodies to a temporary file, which treq cannot adapt itself
        body = client.FileBodyProducer(request.content)
    response = await http_client.request(
        request.method.decode(),
        base_url.rstrip("/") + path.decode(),
        headers=headers,
        data=body,
        unbuffered=True,
    )
    request.setResponseCode(response.code, response.phrase)
    for name, values in response.headers.getAllRawHeaders():
        if name.lower() not in _NOT_FORWARDED:
            request.responseHeaders.setRawHeaders(name, values)
    if response.length is not None and response.length is not treq.response.UNKNOWN_LENGTH:
        request.setHeader(b"content-length", str(response.length).encode())
    done: defer.Deferred[None] = defer.Deferred()
    relay = _Relay(request, done)
    request.notifyFinish().addErrback(lambda _: _stop(relay))
    response.deliverBody(relay)
    await done


def _has_body(request: Request) -> bool:
    if request.requestHeaders.hasHeader(b"content-length"):
        return True
    return request.requestHeaders.hasHeader(b"transfer-encoding")


def _stop(relay: _Relay) -> None:
    if relay.transport is not None:
        relay.transport.stopProducing()


def proxy_failed(request: Request, reason: failure.Failure, name: str) -> None:
    """Answer 502 when the agent could not be reached (if nothing was sent yet)."""
    log.msg(f"coordinator: proxying to {name} failed: {reason.getErrorMessage()}")
    if request.startedWriting:
        request.loseConnection()
        return
    request.write(
        json_error(
            request,
            502,
            f"buildlet {name} did not answer: {reason.getErrorMessage()}; it may be gone, "
            f"check `buildbot-farm lease list`",
        )
    )
