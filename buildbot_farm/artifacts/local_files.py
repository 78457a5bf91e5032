"""Downloads of artifacts kept in a local directory.

A whole file the in-memory index knows (:mod:`.known_files`) is answered on the reactor,
with no thread-pool or database trip: :func:`open_known` opens it (``O_NOFOLLOW`` on its
last name, then checks where the descriptor really leads, so a symbolic link anywhere on
the way sends the request the slow way, which refuses it) and :func:`send_open_file`
answers: ETag and Last-Modified (with their conditional requests), Content-Length, a
content type by the file's name; the body in one write up to :data:`SMALL_FILE` bytes,
else by ``sendfile`` in a thread of its own (:mod:`.kernel_send`; a :class:`FileSender`
when the connection is not plain TCP).

A GET with a Range header, or of a file the index does not know, takes the slow way: the
storage checks the path on the thread pool, the index gives the digest, and
:class:`LocalFile` answers, parsing Range headers with ``twisted.web.static.File``'s own
helpers (through :mod:`buildbot_farm.compat.twisted_web`). static.File's own producer
reads 64 KiB per turn of the reactor, which keeps a download at about half of nginx's
speed; :class:`FileSender` is a push producer reading :data:`READ_SIZE` bytes at a time,
writing until the connection asks it to pause, and letting the connection pass each read
to the kernel in one piece. Requests for several ranges at once keep static.File's own
producer.
"""

from __future__ import annotations

import os
import stat
from typing import Any, BinaryIO

from twisted.internet import defer, interfaces, task
from twisted.python import log
from twisted.web import http, static
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from buildbot_farm.artifacts import kernel_send
from buildbot_farm.artifacts.known_files import KnownFile
from buildbot_farm.compat import twisted_web

READ_SIZE = 1024 * 1024
# Files up to this size are read in one go and answered in one write.
SMALL_FILE = 256 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_known(root: str, path: str, known: KnownFile) -> tuple[int, os.stat_result] | None:
    """The file ``root/path`` open for reading (a descriptor, and its stat) when it is
    still the file ``known`` describes; None when the request must go the slow way.

    ``root`` is the storage's resolved directory; ``path`` has safe segments only (no
    ``..``, no empty segment; see :mod:`.paths`). A symbolic link as the last name fails
    the open (``O_NOFOLLOW``); one on the way makes the descriptor lead elsewhere than
    ``root/path``: both go the slow way. The first match pins the file's identity.
    """
    full = root + "/" + path
    try:
        fd = os.open(full, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        if os.readlink(f"/proc/self/fd/{fd}") != full:
            raise OSError("the path leads elsewhere")
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    identity = (info.st_ino, info.st_mtime_ns, info.st_size)
    if not stat.S_ISREG(info.st_mode) or info.st_size != known.size or (
        known.identity is not None and known.identity != identity
    ):
        os.close(fd)
        return None
    known.identity = identity
    return fd, info


def send_open_file(
    request: Any, fd: int, info: os.stat_result, sha256: str, content_type: str
) -> Any:
    """Answer a GET or HEAD (no Range) with the whole open file ``fd``; it is closed when
    done. The response body (as ``render`` returns it) or NOT_DONE_YET."""
    request.setHeader(b"accept-ranges", b"bytes")
    if (request.setETag(f'"{sha256}"'.encode()) is http.CACHED
            or request.setLastModified(info.st_mtime) is http.CACHED):
        os.close(fd)
        return b""
    request.setHeader(b"content-type", content_type.encode())
    request.setHeader(b"content-length", str(info.st_size).encode())
    if request.method == b"HEAD":
        os.close(fd)
        return b""
    if info.st_size <= SMALL_FILE:
        try:
            return os.read(fd, info.st_size)
        finally:
            os.close(fd)
    client = twisted_web.plain_tcp_client(request)
    if client is None or not kernel_send.AVAILABLE:
        FileSender(request, os.fdopen(fd, "rb")).start()
    else:
        defer.ensureDeferred(_send_in_kernel(request, client, fd, info.st_size))
    return NOT_DONE_YET


async def _send_in_kernel(request: Any, client: Any, fd: int, size: int) -> None:
    """Send the headers, then the file ``fd`` by ``sendfile`` (:mod:`.kernel_send`)."""
    try:
        request.write(b"")  # the status line and headers
        client.stopReading()  # resumed by twisted.web when the request is finished
        # The head first, then the file. The reactor sends the head in its next turn or the
        # one after: look again at once twice, then back off from 1 ms. (A first pause of
        # 1 ms held the file back: its first byte came 2.5 ms after the request, now 1.4 ms.)
        pause, looked = 0.0, 0
        while twisted_web.unsent_bytes(client) and not twisted_web.disconnected(request):
            await task.deferLater(client.reactor, pause)
            looked += 1
            if looked >= 2:
                pause = min(max(pause * 2, 0.001), 0.05)
        if twisted_web.disconnected(request):
            return
        await kernel_send.send_in_thread(client.reactor, fd, client.fileno(), 0, size)
    except kernel_send.ClientGone:
        client.abortConnection()
        return
    except OSError as e:
        log.msg(f"farm artifacts: sending a file broke off ({e}); closing the connection")
        client.abortConnection()
        return
    finally:
        os.close(fd)
    request.finish()


@implementer(interfaces.IPushProducer)
class FileSender:
    """Writes ``size`` bytes of ``source`` from ``offset`` into ``request``, then finishes it.

    ``size`` None means to the end of the file. The file is closed when done or when the
    client goes away.
    """

    def __init__(
        self, request: Any, source: BinaryIO, offset: int = 0, size: int | None = None
    ) -> None:
        self.request: Any = request
        self.source = source
        self.offset = offset
        self.remaining = size
        self.paused = False

    def start(self) -> None:
        """Register with the request and send until the connection's buffer is full."""
        self.source.seek(self.offset)
        transport = self.request.transport
        # A TCP transport hands the kernel at most SEND_LIMIT (128 KiB) per send(); a whole
        # read per send() makes downloads faster than nginx's sendfile on loopback
        # (benchmarks/bench_artifacts.py: 0.08 s against 0.11 s for 256 MiB; 0.10 s before).
        if hasattr(transport, "SEND_LIMIT"):
            transport.SEND_LIMIT = READ_SIZE
        self.request.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:  # noqa: N802
        """The connection's send buffer is full: stop until resumed."""
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        """Read and write until paused, or until everything was sent."""
        self.paused = False
        while not self.paused and self.request is not None:
            wanted = READ_SIZE if self.remaining is None else min(READ_SIZE, self.remaining)
            data = self.source.read(wanted) if wanted else b""
            if not data:
                request = self.request
                self.stopProducing()
                request.unregisterProducer()
                request.finish()
                return
            if self.remaining is not None:
                self.remaining -= len(data)
            self.request.write(data)

    def stopProducing(self) -> None:  # noqa: N802
        """The client went away (or all was sent): close the file."""
        self.source.close()
        self.request = None


class LocalFile(static.File):
    """static.File sending whole files and single ranges with a :class:`FileSender`.

    Range requests are parsed and answered exactly as static.File does, through its
    private helpers (in :mod:`buildbot_farm.compat.twisted_web`, with their tripwire
    test). No Content-Encoding is announced (static.File would say gzip
    for ``.gz``, so clients would unpack the artifact): a ``.tar.gz`` is its bytes, as in
    the fast way and from S3.
    """

    contentEncodings: dict[str, str] = {}  # noqa: N815  (static.File's attribute)

    def makeProducer(self, request: Any, fileForReading: Any) -> Any:  # noqa: N802, N803
        """The producer for ``request``'s body; sets the status and Content-* headers."""
        if request.getHeader(b"range") is None:
            twisted_web.set_content_headers(self, request)
            request.setResponseCode(http.OK)
            return FileSender(request, fileForReading)
        wanted = twisted_web.single_range(self, request)
        if wanted is None:
            return super().makeProducer(request, fileForReading)
        offset, size = wanted
        twisted_web.set_content_headers(self, request, size)
        return FileSender(request, fileForReading, offset, size)
