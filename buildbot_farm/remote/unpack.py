"""Applying a container task's changes to a worker's build directory: ``farm-remote.pyz unpack``.

Run on the worker with its Python (>= 3.9), from the archive the step copies there::

    python3 farm-remote.pyz unpack ARCHIVE.tar.zst MANIFEST.json DEST

The manifest (written by the master) lists every member of the archive and every path to
delete. Everything is checked before anything is written: a path that is absolute, climbs
with ``..``, or would be reached through a symbolic link (already in DEST or made by the
archive) is refused, and then nothing is written at all. Exit status: 0 done, 2 refused,
3 the archive could not be read.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import stat
import subprocess
import sys
import tarfile
from typing import IO, Any

from buildbot_farm.remote import tar_stream
from buildbot_farm.remote.paths import UnsafePath, link_stays_inside, safe_member_path
from buildbot_farm.remote.whole_files import SMALL, WholeFiles, move_into_place, unnamed_files_work

REFUSED = 2
UNREADABLE = 3


def check_plan(dest: str, manifest: dict[str, Any]) -> None:
    """Raise UnsafePath unless every path in ``manifest`` stays inside ``dest``.

    Checks names, link targets, and that no parent directory of a path is (or is made by
    the archive into) a symbolic link or a file.
    """
    made_by_archive = {entry["path"] for entry in manifest["files"] if entry.get("type") != "dir"}
    for entry in manifest["files"]:
        path = safe_member_path(entry["path"])
        if entry.get("type") == "symlink" and not link_stays_inside(path, entry["target"]):
            raise UnsafePath(f"{path!r} is a symbolic link to {entry['target']!r}, outside")
        if entry.get("type") == "hardlink":
            safe_member_path(entry["target"])
        _check_parents(dest, path, made_by_archive)
    for deleted in manifest["deleted"]:
        _check_parents(dest, safe_member_path(deleted), made_by_archive)


def _check_parents(dest: str, path: str, made_by_archive: set[str],
                   directories: set[str] | None = None) -> None:
    """Raise UnsafePath unless every parent of ``path`` is a real directory or absent.

    Parents found in ``directories`` (ones already seen to be directories, during one
    extraction, which cannot change them) are not looked at again; the ones looked at and
    found to be directories are added to it.
    """
    parent = ""
    for part in path.split("/")[:-1]:
        parent = f"{parent}/{part}" if parent else part
        if parent in made_by_archive:
            raise UnsafePath(f"{path!r} would be written through {parent!r}, not a directory")
        if directories is not None and parent in directories:
            continue
        try:
            info = os.lstat(os.path.join(dest, parent))
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode):
            raise UnsafePath(f"{path!r} would be written through the symbolic link {parent!r}")
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafePath(f"{path!r} would be written under {parent!r}, which is a file")
        if directories is not None:
            directories.add(parent)


def delete(dest: str, path: str) -> None:
    """Remove ``path`` under ``dest`` (a link itself, never what it points to); absent is fine."""
    full = os.path.join(dest, path)
    try:
        info = os.lstat(full)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(full)
    else:
        os.unlink(full)


def extract(dest: str, archive: IO[bytes], allowed: set[str],
            threads: bool = True) -> tuple[int, int]:
    """Write the members of the uncompressed tar stream ``archive`` under ``dest``.

    Only names in ``allowed`` are written; any other member stops the extraction with
    UnsafePath. A stream that is not a readable tar raises ``tarfile.ReadError``. Returns
    (files written, bytes written). Small files are written by a few threads where the
    system allows (:mod:`~buildbot_farm.remote.whole_files`) and ``threads`` is true; the
    others each into a ``.farm-partial`` beside its place, moved there once complete.
    """
    writers = WholeFiles() if threads and unnamed_files_work(dest) else None
    extraction = _Extraction(dest, allowed, writers)
    reader = tar_stream.TarReader()
    completed = False
    try:
        while not reader.finished and (chunk := archive.read(1 << 20)):
            for event in reader.feed(chunk):
                if isinstance(event, tar_stream.Header):
                    extraction.start(event.member)
                elif isinstance(event, tar_stream.Data):
                    extraction.write(event.chunk)
                else:
                    extraction.end(event.member)
        reader.close()
        completed = True
    except tar_stream.TarError as error:
        raise tarfile.ReadError(str(error)) from error
    finally:
        extraction.drop_partial()
        if writers is not None and completed:
            writers.close()
        elif writers is not None:  # the files complete so far are written, as without them
            with contextlib.suppress(OSError):  # the error on its way out says more
                writers.close()
    return extraction.count, extraction.size


class _Extraction:
    """Members written under ``dest`` as the tar stream's events come: each small file given
    whole to ``writers`` if there are, any other into a ``.farm-partial`` beside its place,
    moved there once complete."""

    def __init__(self, dest: str, allowed: set[str], writers: WholeFiles | None) -> None:
        self.dest = dest
        self.allowed = allowed
        self.writers = writers
        self.held: tuple[str, list[bytes]] | None = None  # a small file's place and data
        self.count = self.size = 0
        # Directories seen to be real ones: the archive cannot make them anything else
        # (check_plan refuses a member under a path the archive makes a file or link).
        self.directories: set[str] = set()
        self.partial: tuple[int, str, str] | None = None  # descriptor, its path, the place

    def start(self, member: tar_stream.Member) -> None:
        """A member begins: check its path, then make it (a file: open its partial)."""
        path = safe_member_path(member.name)
        if path not in self.allowed:
            raise UnsafePath(f"{path!r} is in the archive but not in the manifest")
        _check_parents(self.dest, path, set(), self.directories)
        full = os.path.join(self.dest, path)
        if member.kind == "dir":
            if os.path.islink(full) or os.path.isfile(full):
                os.unlink(full)
            os.makedirs(full, exist_ok=True)
            os.chmod(full, member.mode & 0o7777)
            return
        if member.kind == "other":
            raise UnsafePath(f"{path!r} is neither a file, a directory nor a link")
        folder = posixpath.dirname(path)
        if folder not in self.directories:  # checked above: absent parts are made real ones
            os.makedirs(os.path.dirname(full) or self.dest, exist_ok=True)
            self.directories.add(folder)
        if member.kind == "symlink":
            delete(self.dest, path)
            os.symlink(member.linkname, full)
        elif member.kind == "hardlink":
            if self.writers is not None:
                self.writers.wait()  # its target in place
            delete(self.dest, path)
            os.link(os.path.join(self.dest, safe_member_path(member.linkname)), full)
        elif self.writers is not None and member.size <= SMALL:
            self.held = (full, [])
        else:
            partial = f"{full}.farm-partial"
            self.partial = (_create(partial), partial, full)
        self.count += 1

    def write(self, data: bytes) -> None:
        """The next piece of the current file's data."""
        if self.held is not None:
            self.held[1].append(data)
            return
        assert self.partial is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.partial[0], view):]

    def end(self, member: tar_stream.Member) -> None:
        """A member is complete: a file gets its mode and time and takes its place."""
        if self.held is not None:
            assert self.writers is not None
            self.writers.add(*self.held, member.mode & 0o7777, member.mtime)
            self.held = None
            self.size += member.size
            return
        if self.partial is None:
            return
        fd, partial, full = self.partial
        os.fchmod(fd, member.mode & 0o7777)
        os.utime(fd, (member.mtime, member.mtime))
        os.close(fd)
        self.partial = None
        move_into_place(partial, full)
        self.size += member.size

    def drop_partial(self) -> None:
        """Remove the file being written, if the stream stopped in its middle."""
        if self.partial is not None:
            fd, partial, _ = self.partial
            os.close(fd)
            os.unlink(partial)
            self.partial = None


def _create(path: str) -> int:
    """A new file ``path`` open for writing (replacing a leftover there, never through a link)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileExistsError:  # left by an earlier unpack that was killed
        os.unlink(path)
        return os.open(path, flags, 0o600)


def open_zstd(path: str) -> tuple[IO[bytes], Any]:
    """Open a zstd-compressed file for streaming reads; return (stream, process or None).

    Uses the ``zstandard`` package, Python 3.14's ``compression.zstd``, or the ``zstd``
    command, whichever is there first.
    """
    try:
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb")), None
    except ImportError:
        pass
    try:
        from compression import zstd

        return zstd.open(path, "rb"), None
    except ImportError:
        pass
    try:
        process = subprocess.Popen(["zstd", "-dc", path], stdout=subprocess.PIPE)
    except OSError as error:
        raise OSError(
            "this worker cannot decompress zstd: install the `zstd` command or the Python"
            f" package `zstandard` for {sys.executable} ({error})"
        ) from error
    assert process.stdout is not None
    return process.stdout, process


def apply(dest: str, manifest: dict[str, Any], archive: IO[bytes]) -> tuple[int, int]:
    """Check the whole plan, then delete and extract as ``manifest`` says.

    ``archive`` is the uncompressed tar. Raises UnsafePath before anything is written if
    a path of the manifest is refused; returns (entries written, bytes of file data).
    """
    try:
        check_plan(dest, manifest)
    except UnsafePath as error:
        raise UnsafePath(f"{error}; nothing was written") from error
    for path in manifest["deleted"]:
        delete(dest, path)
    return extract(dest, archive, {entry["path"] for entry in manifest["files"]})


def main(argv: list[str]) -> int:
    """Check, then delete and extract as the manifest says; print what was done."""
    if len(argv) != 3:
        print("usage: farm-remote.pyz unpack ARCHIVE MANIFEST DEST", file=sys.stderr)
        return REFUSED
    archive_path, manifest_path, dest = argv
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    try:
        stream, process = open_zstd(archive_path)
    except OSError as error:
        print(str(error), file=sys.stderr)
        return UNREADABLE
    try:
        with stream:
            count, size = apply(dest, manifest, stream)
    except UnsafePath as error:
        print(f"refused: {error}", file=sys.stderr)
        return REFUSED
    except (tarfile.TarError, OSError) as error:
        print(f"cannot read {archive_path}: {error}", file=sys.stderr)
        return UNREADABLE
    if process is not None and process.wait() != 0:
        print(f"zstd could not decompress {archive_path}", file=sys.stderr)
        return UNREADABLE
    print(summary(count, size, manifest, dest))
    return 0


def summary(count: int, size: int, manifest: dict[str, Any], dest: str) -> str:
    """What was applied, for the step log."""
    return (f"unpacked {count} entries ({size} bytes of file data), deleted"
            f" {len(manifest['deleted'])}, into {dest}")
