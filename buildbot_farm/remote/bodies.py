"""Request and response bodies: chunked or sized request bodies, checked gunzip, chunked output."""

from __future__ import annotations

import io
import zlib
from functools import partial
from typing import Any

from buildbot_farm.remote.errors import AgentError, ArchiveError

CHUNK = 64 * 1024
GZIP_WBITS = 16 + zlib.MAX_WBITS  # tells zlib to expect, and check, a gzip header and trailer


class RequestBody(io.BufferedIOBase):
    """The request body, read incrementally from Content-Length or chunked framing."""

    def __init__(self, rfile: io.BufferedIOBase, encoding: str, length: str | None) -> None:
        super().__init__()
        self._rfile = rfile
        self._chunked = encoding.strip().lower() == "chunked"
        if encoding and not self._chunked:
            raise AgentError(501, f"Transfer-Encoding {encoding!r} is not supported; use chunked")
        if self._chunked or length is None:
            self._left = 0
        elif length.strip().isdigit():
            self._left = int(length)
        else:
            raise AgentError(400, f"Content-Length {length!r} is not a number")
        self.finished = not self._chunked and self._left == 0

    def read(self, size: int | None = -1) -> bytes:
        """Return up to size bytes (all that is left if size is negative); b"" at the end."""
        if size is None or size < 0:
            return b"".join(iter(partial(self.read, CHUNK), b""))
        if self.finished or size == 0:
            return b""
        if self._left == 0:
            self._left = self._next_chunk_size()
            if self._left == 0:
                while self._rfile.readline(CHUNK) not in (b"\r\n", b"\n", b""):
                    pass  # skip request trailers
                self.finished = True
                return b""
        data = self._rfile.read(min(size, self._left))
        if not data:
            raise AgentError(400, "the request body ended early: the client stopped sending it")
        self._left -= len(data)
        if self._left == 0:
            if not self._chunked:
                self.finished = True
            elif self._rfile.readline(CHUNK).strip():
                raise AgentError(400, "malformed chunked request body: a chunk is too long")
        return data

    def read_limited(self, limit: int) -> bytes:
        """Read the whole body; 413 if it is longer than limit."""
        data = self.read(limit + 1)
        while len(data) <= limit and not self.finished:
            data += self.read(limit + 1 - len(data))
        if len(data) > limit:
            raise AgentError(413, f"the request body is longer than {limit} bytes")
        return data

    def _next_chunk_size(self) -> int:
        line = self._rfile.readline(CHUNK)
        text = line.split(b";", 1)[0].strip()
        try:
            size = int(text, 16)
        except ValueError:
            size = -1
        if size < 0:
            raise AgentError(400, f"malformed chunked request body: bad chunk size {line[:40]!r}")
        return size


class GunzipReader(io.BufferedIOBase):
    """Decompresses a gzip stream from source, failing on corrupt data or a missing trailer."""

    def __init__(self, source: io.BufferedIOBase) -> None:
        super().__init__()
        self._source = source
        self._inflater = zlib.decompressobj(GZIP_WBITS)
        self._in_member = False
        self._input = b""
        self._output = b""

    def read(self, size: int | None = -1) -> bytes:
        """Return up to size decompressed bytes; b"" only after an intact end of stream."""
        if size is None or size < 0:
            return b"".join(iter(partial(self.read, CHUNK), b""))
        if not self._output:
            self._output = self._inflate_some()
        data, self._output = self._output[:size], self._output[size:]
        return data

    def _inflate_some(self) -> bytes:
        while True:
            if not self._input:
                self._input = self._source.read(CHUNK)
                if not self._input:
                    if self._in_member:
                        raise ArchiveError("the gzip stream is truncated; send the whole file")
                    return b""
            if not self._in_member:  # the first member, or another one concatenated after it
                self._inflater = zlib.decompressobj(GZIP_WBITS)
                self._in_member = True
            try:
                data = self._inflater.decompress(self._input, CHUNK)
            except zlib.error as exc:
                raise ArchiveError(f"the body is not valid gzip data ({exc})") from None
            if self._inflater.eof:
                self._input = self._inflater.unused_data
                self._in_member = False
            else:
                self._input = self._inflater.unconsumed_tail
            if data:
                return data


class ChunkedStream:
    """A response body sent in HTTP/1.1 chunks, each written to the socket at once."""

    def __init__(self, wfile: io.BufferedIOBase) -> None:
        self._wfile = wfile

    def write(self, data: bytes) -> int:
        """Send data as one chunk."""
        if data:
            self._wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        return len(data)

    def flush(self) -> None:
        """Flush the socket writer (chunks are not buffered, so this is cheap)."""
        self._wfile.flush()

    def finish(self, trailers: dict[str, str] | None = None) -> None:
        """End the body, with the given HTTP trailer fields."""
        fields = "".join(f"{name}: {value}\r\n" for name, value in (trailers or {}).items())
        self._wfile.write(b"0\r\n" + fields.encode("latin-1", "replace") + b"\r\n")


class _ChunkSink(io.RawIOBase):
    """The raw side of :func:`gathered_chunks`: each write is one chunk of the stream."""

    def __init__(self, stream: ChunkedStream) -> None:
        super().__init__()
        self._stream = stream

    def writable(self) -> bool:
        """Always: this is an output."""
        return True

    def write(self, data: Any, /) -> int:
        """Send ``data`` as one chunk."""
        return self._stream.write(bytes(data))


def gathered_chunks(stream: ChunkedStream, size: int = CHUNK) -> io.BufferedWriter:
    """A writer that gathers small writes into chunks of about ``size`` bytes of ``stream``.

    For bulk bodies made in small pieces (a tar.gz comes out of gzip about 10 KiB at a time):
    a chunk per piece costs a send here, and a read, a scan and a send at every proxy on the
    way. Closing it sends what it holds; the stream is not finished.
    """
    return io.BufferedWriter(_ChunkSink(stream), buffer_size=size)

