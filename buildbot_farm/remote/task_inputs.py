"""Tar streams bound for a task's container: one file, a directory, the control directory.

Standard library only. The master wraps a file a worker uploads with :func:`file_as_tar`;
``farm-remote.pyz container-task`` tars the worker's inputs itself with :func:`path_as_tar`.
Each stream is produced piece by piece, never held whole.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterable, Iterator

from buildbot_farm.remote import tar_stream
from buildbot_farm.remote.task_paths import CONTROL_DIR

READ_SIZE = 1 << 20


class InputChanged(Exception):
    """A worker file changed size while it was being copied."""


def file_as_tar(
    name: str, size: int, mode: int, mtime: float, chunks: Iterable[bytes]
) -> Iterator[bytes]:
    """A one-member tar stream of a file whose ``size`` bytes arrive as ``chunks``."""
    yield from _file_member(name, size, mode, mtime, chunks)
    yield tar_stream.end_of_archive()


def _file_member(
    name: str, size: int, mode: int, mtime: float, chunks: Iterable[bytes]
) -> Iterator[bytes]:
    yield tar_stream.header(tar_stream.Member(name, tarfile.REGTYPE, size, mode, mtime))
    sent = 0
    for chunk in chunks:
        sent += len(chunk)
        if sent > size:
            raise InputChanged(f"{name} grew while it was being copied; run the step again")
        yield chunk
    if sent != size:
        raise InputChanged(f"{name} shrank while it was being copied; run the step again")
    yield tar_stream.padding(size)


def path_as_tar(path: str, file_name: str) -> Iterator[bytes]:
    """The tar stream of the file or directory ``path``, as the container should get it.

    A directory's members are named relative to it (``.`` first, as ``tar -C path -c .``);
    a file is one member called ``file_name``. Files, directories and symbolic links go in (owners
    are left to the engine: the task's user owns what it is given); anything else (sockets,
    pipes, devices) stays behind. Raises InputChanged if a file changes size meanwhile.
    """
    if not os.path.isdir(path):
        info = os.stat(path)
        yield from _file_member(file_name, info.st_size,
                                stat.S_IMODE(info.st_mode), info.st_mtime, _read(path))
        yield tar_stream.end_of_archive()
        return
    yield from _member(path, ".")
    for parent, directories, files in os.walk(path):
        directories.sort()
        relative = os.path.relpath(parent, path)
        for name in directories + sorted(files):
            member = name if relative == "." else f"{relative}/{name}"
            yield from _member(os.path.join(parent, name), member)
    yield tar_stream.end_of_archive()


def _member(full: str, name: str) -> Iterator[bytes]:
    info = os.lstat(full)
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISREG(info.st_mode):
        yield from _file_member(name, info.st_size, mode, info.st_mtime, _read(full))
    elif stat.S_ISDIR(info.st_mode):
        yield tar_stream.header(tar_stream.Member(name, tarfile.DIRTYPE, 0, mode, info.st_mtime))
    elif stat.S_ISLNK(info.st_mode):
        yield tar_stream.header(tar_stream.Member(name, tarfile.SYMTYPE, 0, mode, info.st_mtime,
                                                  os.readlink(full)))


def _read(path: str) -> Iterator[bytes]:
    with open(path, "rb") as source:
        while chunk := source.read(READ_SIZE):
            yield chunk


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
