"""Archives: unpacking a tar.gz all or nothing, refusing anything that could escape; packing one.

The master uses ``extract_tgz`` too (``buildbot-farm lease get``), so that both sides check
archives the same way.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator

from buildbot_farm.remote.bodies import CHUNK, ChunkedStream, GunzipReader, gathered_chunks
from buildbot_farm.remote.errors import AgentError, ArchiveError
from buildbot_farm.remote.paths import UnsafePath, relative_parts, within

SPECIAL_KINDS = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
                 tarfile.FIFOTYPE: "FIFO"}


def archive_parts(path: str, member: str) -> list[str]:
    """Split a path from a tar member into components; 400 if absolute or containing '..'."""
    try:
        return relative_parts(path, f"member {member!r}: path")
    except UnsafePath as exc:
        raise ArchiveError(f"{exc}; archives must stay inside their target") from None


class TarExtraction:
    """Unpacks tar members into an empty staging directory, refusing anything that could escape."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.count = 0
        self._symlinks: list[tuple[str, str]] = []

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """Unpack one member; 400 naming it if it is unsafe."""
        name = member.name
        parts = archive_parts(name, name)
        if not parts:
            if member.isdir():
                return  # "./": the target directory itself
            raise ArchiveError(f"member {name!r} has no file name")
        dest = os.path.join(self._make_parents(parts, name), parts[-1])
        if member.isdir():
            self._add_dir(dest, member)
        elif member.isreg():
            self._add_file(tar, dest, member)
        elif member.issym():
            self._add_symlink(parts, dest, member)
        elif member.islnk():
            self._add_hardlink(dest, member)
        else:
            kind = SPECIAL_KINDS.get(member.type, f"tar entry of type {member.type!r}")
            raise ArchiveError(f"member {name!r} is a {kind}; only files, dirs and links unpack")
        self.count += 1

    def check_symlinks(self) -> None:
        """Check every link again once all is unpacked, as later members change where links lead."""
        for path, name in self._symlinks:
            if not within(self.root, os.path.realpath(path)):
                raise ArchiveError(f"symlink {name!r} leads outside the target via other links")

    def _make_parents(self, parts: list[str], name: str) -> str:
        path = self.root
        for depth, part in enumerate(parts[:-1], start=1):
            path = os.path.join(path, part)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                os.mkdir(path)
                continue
            if stat.S_ISLNK(mode):
                link = "/".join(parts[:depth])
                raise ArchiveError(f"member {name!r} goes through the symlink {link!r}")
            if not stat.S_ISDIR(mode):
                raise ArchiveError(f"member {name!r} needs {'/'.join(parts[:depth])!r} to be a dir")
        return path

    def _clear(self, dest: str, name: str) -> None:
        try:
            mode = os.lstat(dest).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            raise ArchiveError(f"member {name!r} is not a directory, but an earlier member is")
        os.unlink(dest)  # a later member replaces an earlier one, as with tar

    def _add_dir(self, dest: str, member: tarfile.TarInfo) -> None:
        try:
            mode = os.lstat(dest).st_mode
        except FileNotFoundError:
            os.mkdir(dest)
        else:
            if not stat.S_ISDIR(mode):
                raise ArchiveError(f"member {member.name!r} is a dir, but an earlier one is not")
        os.chmod(dest, (member.mode & 0o777) | stat.S_IRWXU)  # we must be able to fill it

    def _add_file(self, tar: tarfile.TarFile, dest: str, member: tarfile.TarInfo) -> None:
        source = tar.extractfile(member)
        assert source is not None  # regular members always have data
        self._clear(dest, member.name)
        with source, open(dest, "xb") as out:  # "x" never follows a link left at dest
            shutil.copyfileobj(source, out, CHUNK)
        os.chmod(dest, member.mode & 0o777)
        os.utime(dest, (member.mtime, member.mtime))

    def _add_symlink(self, parts: list[str], dest: str, member: tarfile.TarInfo) -> None:
        target = member.linkname
        if not target or target.startswith("/"):
            raise ArchiveError(f"symlink {member.name!r} -> {target!r}: links must be relative")
        resolved = posixpath.normpath(posixpath.join(*parts[:-1], target))
        if resolved == ".." or resolved.startswith("../"):
            raise ArchiveError(f"symlink {member.name!r} -> {target!r} points outside the target")
        self._clear(dest, member.name)
        os.symlink(target, dest)
        self._symlinks.append((dest, member.name))

    def _add_hardlink(self, dest: str, member: tarfile.TarInfo) -> None:
        source = os.path.join(self.root, *archive_parts(member.linkname, member.name))
        if source == dest or os.path.realpath(source) != source or not os.path.isfile(source):
            raise ArchiveError(f"hard link {member.name!r} -> {member.linkname!r} must point to a "
                               "regular file unpacked earlier from the same archive")
        self._clear(dest, member.name)
        os.link(source, dest)


def extract_tgz(body: io.BufferedIOBase, root: str) -> int:
    """Unpack a tar.gz stream into the empty directory root and return the member count."""
    gunzip = GunzipReader(body)
    extraction = TarExtraction(root)
    try:
        with tarfile.open(fileobj=gunzip, mode="r|") as tar:
            for member in tar:
                extraction.add(tar, member)
    except tarfile.TarError as exc:
        raise ArchiveError(f"the body is not a valid tar.gz archive ({exc})") from None
    gunzip.read()  # the rest of the stream, so that its gzip trailer is checked too
    extraction.check_symlinks()
    return extraction.count


def replace_path(src: str, dst: str) -> None:
    """Rename src to dst, replacing a file or link (never following it), even across devices."""
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        if os.path.lexists(dst):
            os.unlink(dst)
        shutil.move(src, dst)


def plan_moves(src_dir: str, dst_dir: str, prefix: str = "") -> list[tuple[str, str]]:
    """List the renames that merge src_dir into dst_dir; 409 where a dir meets a non-dir."""
    moves = []
    for name in sorted(os.listdir(src_dir)):
        src, dst = os.path.join(src_dir, name), os.path.join(dst_dir, name)
        src_is_dir = stat.S_ISDIR(os.lstat(src).st_mode)
        try:
            dst_is_dir = stat.S_ISDIR(os.lstat(dst).st_mode)
        except FileNotFoundError:
            moves.append((src, dst))
            continue
        if src_is_dir and dst_is_dir:
            moves.extend(plan_moves(src, dst, f"{prefix}{name}/"))
        elif src_is_dir or dst_is_dir:
            kinds = ("a directory", "not one") if src_is_dir else ("not a directory", "one")
            raise AgentError(409, f"{prefix + name!r} is {kinds[0]} in the archive but {kinds[1]} "
                                  "in the target; remove it first with /removeall")
        else:
            moves.append((src, dst))
    return moves


def unpack_into(body: io.BufferedIOBase, target: str, scratch: str) -> int:
    """Unpack a tar.gz body into target, all or nothing, staging it in the scratch directory."""
    staging = tempfile.mkdtemp(prefix=".buildlet-unpack-", dir=scratch)
    try:
        os.chmod(staging, 0o755)
        count = extract_tgz(body, staging)
        if os.path.lexists(target):
            for src, dst in plan_moves(staging, target):
                replace_path(src, dst)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            replace_path(staging, target)
        return count
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def walk_tree(top: str, recursive: bool, prefix: str = "",
              skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, str]]:
    """Yield (path, name relative to top) under top, parents first, never following symlinks.

    Directories named (relative to top) in skip are left out with everything in them.
    """
    try:
        with os.scandir(top) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except FileNotFoundError:
        return  # removed while we walked
    for entry in entries:
        name = prefix + entry.name
        is_dir = entry.is_dir(follow_symlinks=False)
        if is_dir and name in skip:
            continue
        yield entry.path, name
        if recursive and is_dir:
            yield from walk_tree(entry.path, True, f"{name}/", skip)


def write_tgz(top: str, out: ChunkedStream) -> None:
    """Write a tar.gz of everything under top to out as it is produced, in chunks of
    about ``CHUNK`` bytes."""
    with gathered_chunks(out) as chunks, \
            gzip.GzipFile(fileobj=chunks, mode="wb", compresslevel=6, mtime=0) as packed, \
            tarfile.open(fileobj=packed, mode="w|") as tar:
        for path, name in walk_tree(top, recursive=True):
            with contextlib.suppress(FileNotFoundError):  # removed while we walked
                tar.add(path, arcname=name, recursive=False)

