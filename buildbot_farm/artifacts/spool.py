"""An upload body on its way into local storage: written straight into a temporary file in
the storage's own temporary directory (the same file system as the artifacts), hashed on
the way.

Each received piece is appended to the file at once, by the reactor (:meth:`Spool.write`)
or by the kernel (:mod:`.kernel_receive` splices the body from the socket and reports each
piece with :meth:`Spool.appended`). With ``hash_aside`` (a body streamed in by the
reactor), a thread of the spool's own reads the pieces back from the page cache, in
order, and hashes them while the next ones arrive: hashlib lets go of the GIL while it
hashes, so sha256 runs on another core instead of adding its time to the upload's (about
1.5 GB/s here: 0.17 s of a 256 MiB upload), and the memory an upload takes stays flat
whatever its size (the page cache is the backlog).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

HASH_READ_SIZE = 256 * 1024  # a piece read back for hashing stays in the core's cache


@dataclass(frozen=True)
class SpooledFile:
    """A complete upload in the storage's temporary directory: its path, size and sha256.

    Whoever claims it (see :meth:`Spool.claim`) must move or remove the file.
    """

    path: Path
    size: int
    sha256: str


class Spool:
    """A temporary file in ``directory`` receiving an upload body, hashing it as it goes.

    Call :meth:`write` for each received piece (it raises the OSError a full disk gives), or
    :meth:`appended` for each piece another writer put at the end of :meth:`fileno`, then
    :meth:`finish` (again later if needed: it returns the same file); :meth:`discard`
    removes the file at any time unless it has been claimed.
    """

    def __init__(self, directory: Path, hash_aside: bool = False) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix="put-")
        self.path = Path(name)
        self.size = 0
        self._fd: int | None = fd
        self._digest = hashlib.sha256()
        self._hasher = _Hasher(self._digest, fd) if hash_aside else None
        self._sha256: str | None = None
        self._claimed = False
        self._discarded = False

    def write(self, data: bytes) -> None:
        """Append ``data`` to the file and hash it (or have it hashed)."""
        assert self._fd is not None, "write after finish or discard"
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        if self._hasher is None:
            self.size += len(data)
            self._digest.update(data)
        else:
            self.appended(len(data))

    def fileno(self) -> int:
        """The open file (positioned at its end) that :meth:`appended` speaks of."""
        assert self._fd is not None, "the spool is finished or discarded"
        return self._fd

    def appended(self, count: int) -> None:
        """``count`` more bytes are at the end of the file: count them and have them hashed.

        Only for a spool that hashes aside; may be called from the thread that wrote them.
        """
        assert self._hasher is not None, "only a spool hashing aside reads its file back"
        self.size += count
        self._hasher.pieces.put(self.size)

    def finish(self) -> SpooledFile:
        """Close the file; the complete upload."""
        self._close()
        if self._sha256 is None:
            if self._hasher is not None:
                self._hasher.stop()
                if self._hasher.hashed != self.size:
                    raise OSError(errno.EIO, f"{self.path} is shorter than the body received")
            self._sha256 = self._digest.hexdigest()
        return SpooledFile(self.path, self.size, self._sha256)

    def claim(self) -> Path:
        """Take over the finished file: :meth:`discard` leaves it alone from now on."""
        self._claimed = True
        return self.path

    def discard(self) -> None:
        """Remove the temporary file, unless claimed."""
        self._close()
        if self._hasher is not None and self._sha256 is None:
            self._hasher.abandon()
        if self._claimed or self._discarded:
            return
        self._discarded = True
        if os.path.lexists(self.path):
            os.unlink(self.path)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _Hasher:
    """A thread updating ``digest`` with the file's bytes, in order, up to each end offset
    put in :attr:`pieces` (it reads them from a duplicate of the file's descriptor)."""

    def __init__(self, digest: Any, fd: int) -> None:
        self.pieces: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._digest = digest
        self._fd = os.dup(fd)
        self.hashed = 0
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="farm-upload-sha256",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buffer = bytearray(HASH_READ_SIZE)
        view = memoryview(buffer)
        try:
            while (end := self.pieces.get()) is not None:
                while self.hashed < end and not self._abandoned:
                    got = os.preadv(self._fd, [view[: min(HASH_READ_SIZE, end - self.hashed)]],
                                    self.hashed)
                    if got == 0:  # the file is shorter than said: finish() refuses it
                        return
                    self._digest.update(view[:got])
                    self.hashed += got
        finally:
            os.close(self._fd)

    def stop(self) -> None:
        """Wait until every piece put so far is hashed; end the thread."""
        if self._thread.is_alive():
            self.pieces.put(None)
            self._thread.join()

    def abandon(self) -> None:
        """End the thread soon, without hashing what is left."""
        self._abandoned = True
        self.pieces.put(None)


def spooled_body(request: object) -> Spool | None:
    """The body a streaming request already spooled into the storage, or None."""
    found = getattr(request, "spooled_body", None)
    return found if isinstance(found, Spool) else None


@contextlib.contextmanager
def own_copy(content: BinaryIO) -> Iterator[BinaryIO]:
    """A reader of a received request body that stays usable after the request closes
    ``content`` (twisted.web does when the client goes away): a duplicate of its file
    descriptor, or a copy of a body kept in memory. Closed on leaving the block."""
    try:
        fd = content.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        content.seek(0)
        copy: BinaryIO = io.BytesIO(content.read())
    else:
        copy = os.fdopen(os.dup(fd), "rb")
    with copy:
        yield copy
