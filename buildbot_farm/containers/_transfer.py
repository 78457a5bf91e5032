"""Tar streams for the trip into the container: worker uploads, single files, the control tar."""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from typing import Any

from buildbot.worker.protocols import base
from twisted.internet import defer

from buildbot_farm.containers import _tar
from buildbot_farm.containers._paths import CONTROL_DIR
from buildbot_farm.containers._pipe import ChunkPipe


class InputChanged(Exception):
    """A worker file changed size while it was being copied."""


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


def file_as_tar(
    name: str, size: int, mode: int, mtime: float, chunks: Iterable[bytes]
) -> Iterator[bytes]:
    """A one-member tar stream of a file whose ``size`` bytes arrive as ``chunks``."""
    yield _tar.header(_tar.Member(name, tarfile.REGTYPE, size, mode, mtime))
    sent = 0
    for chunk in chunks:
        sent += len(chunk)
        if sent > size:
            raise InputChanged(f"{name} grew while it was being copied; run the step again")
        yield chunk
    if sent != size:
        raise InputChanged(f"{name} shrank while it was being copied; run the step again")
    yield _tar.padding(size)
    yield _tar.end_of_archive()


def control_tar(directories: Iterable[str]) -> bytes:
    """A small tar that makes ``directories`` (absolute) and the farm's control directory."""
    wanted = set()
    for directory in directories:
        while directory not in ("/", ""):
            wanted.add(directory)
            directory = posixpath.dirname(directory)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in sorted(wanted):
            tar.addfile(_dir(directory.lstrip("/"), 0o755))
        tar.addfile(_dir(CONTROL_DIR.lstrip("/"), 0o777))
    return buffer.getvalue()


def _dir(name: str, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info


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
            if len(pending) < _tar.BLOCK:
                break
            block, pending = pending[:_tar.BLOCK], pending[_tar.BLOCK:]
            if block != _tar.ZERO_BLOCK:
                data_left = -(-_header_size(block) // _tar.BLOCK) * _tar.BLOCK
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
