"""A worker's upload on its way into the container: paced into a pipe, owners made root."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from buildbot.worker.protocols import base
from twisted.internet import defer

from buildbot_farm.containers._pipe import ChunkPipe
from buildbot_farm.remote import tar_stream


class PipeWriter(base.FileWriterImpl):
    """The master end of a worker's upload: each block goes into a ChunkPipe, paced by it."""

    def __init__(self, pipe: ChunkPipe) -> None:
        self.pipe = pipe
        self._closed = False

    def remote_write(self, data: bytes | str) -> defer.Deferred[None]:
        """Take one block from the worker; the answer waits until the engine has room."""
        return self.pipe.write(data.encode() if isinstance(data, str) else data)

    def remote_utime(self, accessed_modified: Any) -> None:
        """Ignore timestamps: the tar stream carries its own."""

    def remote_unpack(self) -> None:
        """The worker finished sending a directory."""
        self.remote_close()

    def remote_close(self) -> None:
        """The worker finished sending."""
        if not self._closed:
            self._closed = True
            self.pipe.close()


def owned_by_root(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The tar stream ``chunks`` with each member's owner made 0:0, as the task runs.

    Docker keeps a tar's owners when it unpacks into a container whose user is root, and
    the task holds no capabilities: a directory sent by a worker that runs as another user
    (a buildlet's ``farm-buildlet``) would not be the task's to write in. Only the ustar
    owner fields change (PAX records, which carry only owners too large for them, pass).
    """
    pending = b""
    data_left = 0
    for chunk in chunks:
        pending += chunk
        out: list[bytes] = []
        while True:
            if data_left:
                taken = pending[:data_left]
                out.append(taken)
                pending, data_left = pending[len(taken):], data_left - len(taken)
                if data_left:
                    break
            if len(pending) < tar_stream.BLOCK:
                break
            block, pending = pending[:tar_stream.BLOCK], pending[tar_stream.BLOCK:]
            if block != tar_stream.ZERO_BLOCK:
                data_left = -(-_header_size(block) // tar_stream.BLOCK) * tar_stream.BLOCK
                block = _root_owned(block)
            out.append(block)
        if out:
            yield b"".join(out)
    if pending:
        yield pending


def _header_size(block: bytes) -> int:
    field = block[124:136]
    if field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.strip(b"\0 ")
    return int(text, 8) if text else 0


def _root_owned(block: bytes) -> bytes:
    zero = b"0000000\0"
    rooted = block[:108] + zero + zero + block[124:148] + b" " * 8 + block[156:265]
    rooted += bytes(64) + block[329:]  # uname and gname: empty
    checksum = b"%06o\0 " % sum(rooted)
    return rooted[:148] + checksum + rooted[156:]
