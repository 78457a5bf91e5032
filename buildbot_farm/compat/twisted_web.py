"""The places the farm reaches into twisted.web's ``Request`` and channel internals.

**The coordinator's proxy.** twisted.web can send neither response trailers nor a chunked
body it did not frame itself, but Go's buildlet client needs ``/exec``'s ``Process-State``
trailer. So the proxy writes the agent's chunked body, trailers included, straight to the
client's connection, after letting twisted.web write the status line and headers. Two things
here are not public API: the ``chunked`` flag (cleared so that ``finish`` does not add a
last chunk of its own) and the ``_encoder`` of a request wrapped in an
``EncodingResourceWrapper`` (such a request cannot take raw bytes).

**The artifact upload.** A PUT is authorised before its body arrives, when twisted.web has
not yet made the request object: only the channel knows the request line then
(:func:`request_line`).

**A client that hung up.** The HTTP kit (``buildbot_farm.web``) must not write to a request
whose client went away (Twisted would log a traceback), and Twisted only says so through
``notifyFinish``'s errback or the private ``_disconnected`` flag (:func:`disconnected`).

**Large proxy bodies.** Before the proxy hands a body's rest to a thread that moves it
socket to socket, it must know that both connections are plain TCP (no TLS, no wrapper, no
content encoder) and that the client's connection has sent everything written to it so far
(:func:`bulk_target`, :func:`unsent_bytes`; tripwire in ``tests/leases/test_bulk_relay.py``).

**Artifact downloads** are sent with ``sendfile(2)`` on the same terms as large proxy
bodies (:func:`plain_tcp_client`, :func:`unsent_bytes`). **Those with a Range header**
(``artifacts/local_files.LocalFile``) are parsed and answered as ``static.File`` does,
with its private ``_parseRangeHeader``, ``_doSingleRangeRequest`` and
``_setContentHeaders`` (:func:`single_range`, :func:`set_content_headers`), so only the
sending of the bytes is the farm's own.

**Spliced upload bodies** are taken from the socket behind the channel's back; the channel is
told with :func:`body_read_elsewhere`.

``tests/test_compat.py`` and ``tests/leases/test_go_protocol.py`` have the tripwire tests
that fail when twisted.web changes these.
"""

from __future__ import annotations

from typing import Any, Callable, cast

from twisted.internet import tcp
from twisted.web import http, static
from twisted.web.server import Request


def raw_body_writer(request: Request) -> Callable[[bytes], None] | None:
    """Send the response's headers and return a writer of raw body bytes; None if it can't be.

    Call it once the status and headers are set, without Content-Length. Only an HTTP/1.1
    client whose response twisted.web would chunk, with no content encoder, can take the
    agent's own chunked framing; for any other the caller de-chunks and uses ``write``.
    """
    if request.clientproto != b"HTTP/1.1" or request.method == b"HEAD":
        return None
    if request.code in http.NO_BODY_CODES or getattr(request, "_encoder", None) is not None:
        return None
    request.write(b"")  # twisted.web writes the headers, with Transfer-Encoding: chunked
    if request.startedWriting and not getattr(request, "chunked", False):
        raise RuntimeError("twisted.web did not chunk an HTTP/1.1 response without a length")
    return request.channel.write


def finish_raw_body(request: Request) -> None:
    """Finish a request whose chunked body (last chunk and trailers too) was written raw."""
    request.chunked = 0
    request.finish()


def request_line(channel: http.HTTPChannel) -> tuple[bytes, bytes, bytes]:
    """The method, URI and protocol of the request ``channel`` is reading the body of.

    ``HTTPChannel`` keeps them in ``_command``, ``_path`` and ``_version`` from the request
    line on; the Request gets them only when the body has been read.
    """
    return channel._command, channel._path, channel._version


def disconnected(request: Request) -> bool:
    """Whether the client of ``request`` hung up before the answer was finished.

    ``request.finished`` stays false for a client that went away; ``Request`` keeps that in
    ``_disconnected`` (set by ``connectionLost``), which the kit checks before each write.
    """
    return bool(request._disconnected)


def bulk_target(request: Request, agent: object) -> int | None:
    """The client's socket, if the agent's body can go to it unchanged; else None.

    That needs both connections plain TCP (no TLS, no wrapper) and no content encoder on the
    request (``_encoder``, as in :func:`raw_body_writer`): only then are the bytes on the
    client's socket exactly the agent's.
    """
    client = request.transport
    if getattr(request, "_encoder", None) is not None:
        return None
    if type(client) is not tcp.Server or type(agent) is not tcp.Client:
        return None
    return cast(int, client.fileno())


def plain_tcp_client(request: Request) -> Any:
    """The client's TCP transport, if bytes written to its socket reach the client unchanged
    (plain TCP, no TLS or wrapper, no content encoder on the request); else None."""
    client = request.transport
    if getattr(request, "_encoder", None) is not None or type(client) is not tcp.Server:
        return None
    return client


def unsent_bytes(transport: object) -> int:
    """How many bytes written to a TCP connection have not yet been sent to its socket.

    ``FileDescriptor`` keeps what is still to send in ``dataBuffer`` (from ``offset``) and
    ``_tempDataLen``, none of it public.
    """
    connection = cast(Any, transport)
    return len(connection.dataBuffer) - connection.offset + connection._tempDataLen


def set_content_headers(file: static.File, request: Request, size: int | None = None) -> None:
    """Content-Type, Content-Encoding and Content-Length (``size``, else the file's) as
    ``static.File`` sets them (``File._setContentHeaders``)."""
    file._setContentHeaders(request, size)


def single_range(file: static.File, request: Request) -> tuple[int, int] | None:
    """The offset and size of the one byte range ``request`` asks of ``file``, with the
    206 status and Content-Range set as ``static.File`` sets them; None when the Range
    header is unparsable or names several ranges (``static.File`` then answers itself).
    Uses ``File._parseRangeHeader`` and ``File._doSingleRangeRequest``."""
    try:
        ranges = file._parseRangeHeader(request.getHeader(b"range"))
    except ValueError:
        return None
    if len(ranges) != 1:
        return None
    offset, size = file._doSingleRangeRequest(request, ranges[0])
    return offset, size


def body_read_elsewhere(channel: http.HTTPChannel, count: int) -> None:
    """Tell ``channel`` that the last ``count`` bytes of the request body it is reading were
    taken from its socket by someone else (``splice``), so it goes on as if it had read them.

    The channel counts what is left of a body with a declared length in the private
    ``_transferDecoder`` (``_IdentityTransferDecoder``); when that reaches zero it calls
    ``finishCallback`` with the bytes after the body, which ends the request's body.
    """
    decoder = channel._transferDecoder
    if not isinstance(decoder, http._IdentityTransferDecoder) or decoder.contentLength != count:
        raise RuntimeError(f"twisted.web's channel does not expect {count} more body bytes")
    finish = decoder.finishCallback
    decoder.dataCallback = decoder.finishCallback = None
    decoder.contentLength = 0
    finish(b"")
