"""The response bodies ``CoordinatorClient`` reads as streams: raw, JSON lines, exec frames."""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet import defer, protocol
from twisted.python import failure
from twisted.web import client, http

from buildbot_farm.remote.protocol import FrameDecoder


def one_line(body: bytes, limit: int = 200) -> str:
    """``body`` as one line of at most ``limit`` characters (for error messages)."""
    text = " ".join(body.decode(errors="replace").split())
    return text if len(text) <= limit else text[:limit] + "..."


class BodyStream(protocol.Protocol):
    """Passes a response body to ``on_data`` as it arrives; ``done`` fires at its end."""

    def __init__(self, on_data: Callable[[bytes], object]) -> None:
        self._on_data = on_data
        self.done: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        """Pass ``data`` on."""
        self._on_data(data)

    def connectionLost(self, reason: failure.Failure = protocol.connectionDone) -> None:
        """Fire ``done``: with None at the body's end, with the failure if it broke off."""
        if reason.check(client.ResponseDone, http.PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


class JsonLines(protocol.Protocol):
    """Receives a stream of JSON lines; :meth:`next` hands them out in order, then None."""

    def __init__(self) -> None:
        self._buffer = b""
        self._messages: defer.DeferredQueue[Any] = defer.DeferredQueue()
        self.ended = False

    def dataReceived(self, data: bytes) -> None:
        """Queue each complete line."""
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            if line.strip():
                self._messages.put(line)

    def connectionLost(self, reason: failure.Failure = protocol.connectionDone) -> None:
        """The stream ended: :meth:`next` gives None after the queued lines."""
        self.ended = True
        self._messages.put(None)

    async def next(self) -> dict[str, Any] | None:
        """The next message, or None when the stream ended (cancel it to hang up)."""
        line = await self._messages.get()
        if line is None:
            return None
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            raise ValueError(one_line(line))
        return message

    def hang_up(self) -> None:
        """Close the connection, unless the stream already ended."""
        producer: Any = self.transport  # the response's body producer: stopping it hangs up
        if not self.ended and producer is not None:
            producer.stopProducing()


class ExecOutput:
    """Decodes one exec's frames, counting the output bytes passed on (the re-attach offset)."""

    def __init__(self, on_output: Callable[[bytes], object]) -> None:
        self.on_output = on_output
        self.offset = 0
        self.decoder = FrameDecoder()

    def restart(self, offset: int) -> None:
        """A new stream starts at offset (a partial frame of the old one is dropped)."""
        self.offset = offset
        self.decoder = FrameDecoder()

    def feed(self, data: bytes) -> None:
        """Pass on the output in data."""
        for chunk in self.decoder.feed(data):
            self.offset += len(chunk)
            self.on_output(chunk)
