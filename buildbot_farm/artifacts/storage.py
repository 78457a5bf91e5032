"""Local-directory storage of the artifact repository. Every ``thd_*`` method blocks: run it
on the reactor's thread pool.

Files are written to a temporary file in ``ROOT/.farm-tmp`` (the same file system), hashed
on the way, and appear under their name only by an atomic link or rename, complete.
Symbolic links inside the storage are never followed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from buildbot_farm.artifacts.paths import RESERVED_PREFIX, Segments
from buildbot_farm.artifacts.spool import Spool, SpooledFile

CHUNK = 1024 * 1024
TMP_DIR = RESERVED_PREFIX + "-tmp"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class StorageError(Exception):
    """A storage operation refused; ``status`` is the HTTP status that says why."""

    status = 500


class NotFound(StorageError):
    """Nothing is stored at the path."""

    status = 404


class Conflict(StorageError):
    """The path exists (and may not be replaced), or its parent is missing or a file."""

    status = 409


class NotAllowed(StorageError):
    """The method does not apply to what is at the path (MKCOL over a file or collection)."""

    status = 405


class TooLarge(StorageError):
    """The upload is larger than the repository accepts."""

    status = 413


class DigestMismatch(StorageError):
    """The upload's sha256 is not the one the client announced."""

    status = 400


class InsufficientStorage(StorageError):
    """The file system is full; nothing was kept."""

    status = 507


class UnsafeStorage(StorageError):
    """A symbolic link inside the storage; it is not followed."""

    status = 403


@dataclass(frozen=True)
class Entry:
    """A file or collection in the storage."""

    name: str
    is_dir: bool
    size: int
    modified: float


@dataclass(frozen=True)
class Stored:
    """A file just stored: its size, sha256, time, and whether it replaced another."""

    size: int
    sha256: str
    modified: float
    replaced: bool


class ArtifactStorage(Protocol):
    """What the repository needs of a storage backend (:class:`LocalStorage`, ``S3Storage``).

    Every ``thd_*`` method blocks and runs on the reactor's thread pool; each raises a
    :class:`StorageError` for what a client did wrong or what the backend cannot do.
    ``tmp_dir`` is a local directory for files on their way in; ``location`` says where
    the artifacts are, for logs.
    """

    tmp_dir: Path
    location: str

    def thd_prepare(self) -> None:
        """Get ready to serve: create what is missing, drop a crash's leftovers."""

    def thd_stat(self, segments: Segments) -> Entry | None:
        """What is at ``segments``; None when nothing is."""

    def thd_list(self, segments: Segments) -> list[Entry]:
        """The entries directly in the collection ``segments``, by name."""

    def thd_digest(self, segments: Segments) -> tuple[int, str]:
        """Size and sha256 of the stored file ``segments``."""

    def thd_open(self, segments: Segments, staging: Path) -> BinaryIO:
        """The stored file ``segments``, open for reading from its start; the caller closes it.

        A backend that keeps files away from the master first copies the file into
        ``staging`` (a local directory from :meth:`thd_staging_dir`, which the caller
        removes). Raises :class:`NotFound` when no file is stored there.
        """

    def thd_store(
        self, segments: Segments, source: BinaryIO, max_size: int, expected_sha256: str | None,
        overwrite: bool,
    ) -> Stored:
        """Store ``source`` at ``segments`` completely or not at all."""

    def thd_adopt(
        self, tmp: Path, segments: Segments, size: int, sha256: str,
        expected_sha256: str | None, overwrite: bool,
    ) -> Stored:
        """Store the hashed upload ``tmp`` (in ``tmp_dir``) at ``segments``; ``tmp`` goes."""

    def thd_import(self, staged: Path, segments: Segments, overwrite: bool) -> Stored:
        """Store the file ``staged`` (in ``tmp_dir``) at ``segments``; ``staged`` goes."""

    def thd_mkcol(self, segments: Segments, implicit_parents: int) -> None:
        """Create one collection (WebDAV MKCOL)."""

    def thd_delete(self, segments: Segments) -> bool:
        """Delete a file or a collection with its contents; False when nothing was there."""

    def thd_staging_dir(self) -> Path:
        """A new private directory inside ``tmp_dir``."""


class SpoolingStorage(ABC):
    """What every backend shares: an upload is first spooled into ``tmp_dir`` (hashed and
    size-checked on the way), then handed to the backend's ``thd_adopt``."""

    tmp_dir: Path

    def thd_store(
        self, segments: Segments, source: BinaryIO, max_size: int, expected_sha256: str | None,
        overwrite: bool,
    ) -> Stored:
        """Store ``source`` (from its start) at ``segments``, completely or not at all.

        Raises :class:`TooLarge`, :class:`DigestMismatch`, :class:`Conflict` (exists and
        ``overwrite`` is false, or a collection is there) or :class:`InsufficientStorage`
        (the spool is full); whatever it raises, nothing new is visible.
        """
        spooled = thd_spool(source, self.tmp_dir, max_size)
        return self.thd_adopt(spooled.path, segments, spooled.size, spooled.sha256,
                              expected_sha256, overwrite)

    @abstractmethod
    def thd_adopt(
        self, tmp: Path, segments: Segments, size: int, sha256: str,
        expected_sha256: str | None, overwrite: bool,
    ) -> Stored:
        """Store the hashed upload ``tmp`` (in ``tmp_dir``) at ``segments``; ``tmp`` goes."""

    def thd_staging_dir(self) -> Path:
        """A new private directory inside :attr:`tmp_dir` for files on their way in."""
        return Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="stage-"))


class LocalStorage(SpoolingStorage):
    """Artifacts as files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / TMP_DIR
        self.location = str(root)

    def thd_prepare(self) -> None:
        """Create the directories and remove temporary files a crash left."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir()

    def path_of(self, segments: Segments) -> Path:
        """The file system path of ``segments``, refusing any symbolic link on the way."""
        current = self.root
        for segment in segments:
            current = current / segment
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(mode):
                raise UnsafeStorage(f"{'/'.join(segments)}: the storage holds a symbolic link")
        return current

    def thd_stat(self, segments: Segments) -> Entry | None:
        """What is at ``segments``; None when nothing is."""
        path = self.path_of(segments)
        try:
            info = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        name = segments[-1] if segments else ""
        if stat.S_ISDIR(info.st_mode):
            return Entry(name, True, 0, info.st_mtime)
        if stat.S_ISREG(info.st_mode):
            return Entry(name, False, info.st_size, info.st_mtime)
        raise UnsafeStorage(f"{'/'.join(segments)} is not a regular file or directory")

    def thd_list(self, segments: Segments) -> list[Entry]:
        """The files and collections directly in the collection ``segments``, by name."""
        path = self.path_of(segments)
        entries = []
        with os.scandir(path) as found:
            for item in found:
                if item.name.startswith(RESERVED_PREFIX) or item.is_symlink():
                    continue
                info = item.stat(follow_symlinks=False)
                entries.append(Entry(item.name, item.is_dir(follow_symlinks=False),
                                     0 if item.is_dir() else info.st_size, info.st_mtime))
        return sorted(entries, key=lambda entry: entry.name)

    def thd_digest(self, segments: Segments) -> tuple[int, str]:
        """Size and sha256 of the stored file ``segments`` (for files the index lacks)."""
        digest = hashlib.sha256()
        size = 0
        fd = os.open(self.path_of(segments), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as source:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    def thd_open(self, segments: Segments, staging: Path) -> BinaryIO:
        """The file ``segments`` itself, open for reading (``staging`` is not needed here)."""
        try:
            fd = os.open(self.path_of(segments), os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise NotFound(f"no artifact file at /{'/'.join(segments)}") from e
        return os.fdopen(fd, "rb")

    def thd_import(self, staged: Path, segments: Segments, overwrite: bool) -> Stored:
        """Move the file ``staged`` (inside :attr:`tmp_dir`) to ``segments``, hashing it."""
        try:
            size, sha256 = file_sha256(staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return self.thd_adopt(staged, segments, size, sha256, None, overwrite)

    def thd_adopt(
        self, tmp: Path, segments: Segments, size: int, sha256: str,
        expected_sha256: str | None, overwrite: bool,
    ) -> Stored:
        """Place ``tmp`` (a complete upload inside :attr:`tmp_dir`, hashed as it was
        streamed in) at ``segments``; ``tmp`` is gone afterwards, whatever happens.

        Raises what :meth:`thd_store` raises except :class:`TooLarge`.
        """
        try:
            check_digest(sha256, expected_sha256)
            os.chmod(tmp, 0o644)
            return self._place(tmp, segments, overwrite, size, sha256)
        except OSError as e:
            raise _full(e) from e
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)

    def _place(self, tmp: Path, segments: Segments, overwrite: bool, size: int, sha: str) -> Stored:
        self.thd_makedirs(segments[:-1])
        final = self.path_of(segments)
        existing = self.thd_stat(segments)
        if existing is not None and existing.is_dir:
            raise Conflict(f"{'/'.join(segments)} is a collection")
        if overwrite:
            os.replace(tmp, final)
        else:
            try:
                os.link(tmp, final)
            except FileExistsError as e:
                raise Conflict(
                    f"{'/'.join(segments)} exists and artifacts are immutable"
                    " (allow_overwrite is off)"
                ) from e
        return Stored(size, sha, os.lstat(final).st_mtime, existing is not None)

    def thd_makedirs(self, segments: Segments) -> None:
        """Create the collection ``segments`` and its missing parents."""
        for depth in range(1, len(segments) + 1):
            path = self.path_of(segments[:depth])
            try:
                path.mkdir()
            except FileExistsError:
                if not path.is_dir():
                    raise Conflict(f"{'/'.join(segments[:depth])} is a file") from None

    def thd_mkcol(self, segments: Segments, implicit_parents: int) -> None:
        """MKCOL: create one collection; parents may be missing only in the first
        ``implicit_parents`` segments (they are created), else :class:`Conflict`."""
        existing = self.thd_stat(segments)
        if existing is not None:
            raise NotAllowed(f"{'/'.join(segments)} exists")
        parent = segments[:-1]
        self.thd_makedirs(parent[:implicit_parents])
        parent_entry = self.thd_stat(parent)
        if parent_entry is None or not parent_entry.is_dir:
            raise Conflict(f"the parent collection of {'/'.join(segments)} does not exist")
        try:
            self.path_of(segments).mkdir()
        except OSError as e:
            raise _full(e) from e

    def thd_delete(self, segments: Segments) -> bool:
        """Delete the file or collection (with its contents) at ``segments``; False if absent."""
        existing = self.thd_stat(segments)
        if existing is None:
            return False
        path = self.path_of(segments)
        if existing.is_dir:
            shutil.rmtree(path)
        else:
            path.unlink()
        return True


def thd_spool(source: BinaryIO, directory: Path, max_size: int) -> SpooledFile:
    """Copy ``source`` (from its start) into a new temporary file in ``directory``, hashing it.

    Raises :class:`TooLarge` past ``max_size`` bytes and :class:`InsufficientStorage` when
    the file system is full; either way the temporary file is gone.
    """
    try:
        spool = Spool(directory)
    except OSError as e:
        raise _full(e) from e
    try:
        source.seek(0)
        while chunk := source.read(CHUNK):
            if spool.size + len(chunk) > max_size:
                raise TooLarge(f"the upload is larger than {max_size} bytes")
            spool.write(chunk)
        return spool.finish()
    except OSError as e:
        spool.discard()
        raise _full(e) from e
    except BaseException:
        spool.discard()
        raise


def check_digest(sha256: str, expected_sha256: str | None) -> None:
    """Raise :class:`DigestMismatch` unless the client announced no digest or this one."""
    if expected_sha256 is not None and expected_sha256 != sha256:
        raise DigestMismatch(
            f"the upload's sha256 is {sha256}, not {expected_sha256} as announced"
        )


def file_sha256(path: Path) -> tuple[int, str]:
    """Size and sha256 of the local file ``path``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _full(error: OSError) -> Exception:
    """``error``, or :class:`InsufficientStorage` when it says the file system is full."""
    if error.errno in _NO_SPACE:
        return InsufficientStorage("the artifact storage is full; nothing was kept")
    return error
