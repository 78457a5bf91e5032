"""Artifacts in an S3-compatible bucket, behind the same blocking ``thd_*`` contract as
:class:`~buildbot_farm.artifacts.storage.LocalStorage`.

S3 has objects, not directories. A collection is any key prefix ending in ``/`` that some
object starts with; MKCOL writes an empty marker object ``PATH/`` so an empty collection
exists too. An upload is spooled to a local temporary file (hashing and size-checking it
on the way) before one PUT that carries its Content-Length and sha256, which S3 checks:
an upload cut off half-way, too large or with the wrong digest never reaches the bucket,
and S3 shows an object only once it is complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

from buildbot_farm.artifacts.paths import RESERVED_PREFIX, Segments
from buildbot_farm.artifacts.s3_config import S3Bucket
from buildbot_farm.artifacts.s3client import S3Client, S3Refused, S3Unavailable, http_time
from buildbot_farm.artifacts.storage import (
    CHUNK,
    TMP_DIR,
    Conflict,
    Entry,
    NotAllowed,
    NotFound,
    Stored,
    check_digest,
    file_sha256,
    thd_spool,
)


class S3Storage:
    """Artifacts as objects in ``bucket``; ``spool`` is a local directory for uploads in flight.

    Listings ask for ``page_size`` keys at a time (S3's maximum is 1000).
    """

    def __init__(self, bucket: S3Bucket, spool: Path, page_size: int = 1000) -> None:
        self.bucket = bucket
        self.page_size = page_size
        self.client = S3Client(bucket)
        self.tmp_dir = spool / TMP_DIR
        self.location = f"{bucket.endpoint} bucket {bucket.bucket!r} prefix {bucket.key_prefix!r}"

    def key(self, segments: Segments) -> str:
        """The object key of the file ``segments``."""
        return self.bucket.key_prefix + "/".join(segments)

    def _collection_key(self, segments: Segments) -> str:
        return self.key(segments) + "/" if segments else self.bucket.key_prefix

    def thd_prepare(self) -> None:
        """Create the local spool directory (emptied of a crash's leftovers); check the bucket."""
        self.tmp_dir.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.tmp_dir.mkdir()
        status, _, _ = self.client.call("HEAD", None, expected=(200, 403, 404))
        if status != 200:
            raise S3Refused(
                f"the bucket {self.bucket.bucket!r} at {self.bucket.endpoint}"
                f" {'does not exist' if status == 404 else 'refuses these credentials'};"
                " create it or fix S3Bucket(...)"
            )

    def thd_stat(self, segments: Segments) -> Entry | None:
        """What is at ``segments``: an object, a collection (some key below it), or None."""
        name = segments[-1] if segments else ""
        if not segments:
            return Entry(name, True, 0, time.time())
        headers = self.client.head(self.key(segments))
        if headers is not None:
            return Entry(name, False, int(headers.get("content-length") or 0),
                         http_time(headers.get("last-modified")))
        page = self.client.list_page(self._collection_key(segments), None, None, max_keys=1)
        if not page.objects:
            return None
        return Entry(name, True, 0, page.objects[0].modified)

    def thd_list(self, segments: Segments) -> list[Entry]:
        """The files and collections directly in the collection ``segments``, by name.

        S3 keeps no times for prefixes: a collection shows the time of listing.
        """
        prefix = self._collection_key(segments)
        entries: dict[str, Entry] = {}
        now = time.time()
        found_any = False
        for page in self.client.list_all(prefix, "/", self.page_size):
            found_any = found_any or bool(page.objects or page.prefixes)
            for common in page.prefixes:
                name = common[len(prefix):].rstrip("/")
                if name and not name.startswith(RESERVED_PREFIX):
                    entries[name] = Entry(name, True, 0, now)
            for listed in page.objects:
                name = listed.key[len(prefix):]
                if name and not name.startswith(RESERVED_PREFIX) and name not in entries:
                    entries[name] = Entry(name, False, listed.size, listed.modified)
        if segments and not found_any:
            raise NotFound(f"no collection at /{'/'.join(segments)}")
        return sorted(entries.values(), key=lambda entry: entry.name)

    def thd_digest(self, segments: Segments) -> tuple[int, str]:
        """Size and sha256 of the object ``segments``, read in blocks (for unindexed files)."""
        digest = hashlib.sha256()
        size = 0
        for chunk in self._read(segments):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()

    def thd_open(self, segments: Segments, staging: Path) -> BinaryIO:
        """A copy of the object ``segments``, fetched in blocks into an unnamed file in
        ``staging`` (it disappears when closed), open for reading from its start.

        Raises :class:`NotFound` when there is no such object; when S3 fails half-way the
        partial copy is gone.
        """
        # Handed to the caller, who closes it.
        copy = tempfile.TemporaryFile(dir=staging)  # noqa: SIM115
        try:
            for chunk in self._read(segments):
                copy.write(chunk)
            copy.seek(0)
        except BaseException:
            copy.close()
            raise
        return cast(BinaryIO, copy)

    def _read(self, segments: Segments) -> Iterator[bytes]:
        """The bytes of the object ``segments``, block by block, from one GET."""
        key = self.key(segments)
        response = self.client.open("GET", key)
        try:
            if response.status == 404:
                raise NotFound(f"no artifact file at /{'/'.join(segments)}")
            if response.status != 200:
                raise self.client.refusal("GET", key, response.status, response.read())
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise S3Unavailable(f"the S3 endpoint {self.bucket.endpoint} broke off"
                                        f" the object {key} ({type(e).__name__}: {e})") from e
                if not chunk:
                    return
                yield chunk
        finally:
            response.close()

    def thd_store(
        self, segments: Segments, source: BinaryIO, max_size: int, expected_sha256: str | None,
        overwrite: bool,
    ) -> Stored:
        """Upload ``source`` (from its start) to ``segments``.

        Raises :class:`TooLarge`, :class:`DigestMismatch`, :class:`Conflict` or
        :class:`InsufficientStorage` (the local spool is full) before anything is sent;
        whatever it raises, nothing new is in the bucket.
        """
        spooled = thd_spool(source, self.tmp_dir, max_size)
        return self.thd_adopt(spooled.path, segments, spooled.size, spooled.sha256,
                              expected_sha256, overwrite)

    def thd_adopt(
        self, tmp: Path, segments: Segments, size: int, sha256: str,
        expected_sha256: str | None, overwrite: bool,
    ) -> Stored:
        """Upload ``tmp`` (a complete upload in :attr:`tmp_dir`, hashed as it was streamed
        in) to ``segments``; ``tmp`` is gone afterwards, whatever happens."""
        try:
            check_digest(sha256, expected_sha256)
            return self._put(tmp, segments, overwrite, size, sha256)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)

    def thd_import(self, staged: Path, segments: Segments, overwrite: bool) -> Stored:
        """Upload the file ``staged`` (inside :attr:`tmp_dir`) to ``segments``, then delete it."""
        try:
            size, sha256 = file_sha256(staged)
            return self._put(staged, segments, overwrite, size, sha256)
        finally:
            if os.path.lexists(staged):
                os.unlink(staged)

    def _put(self, spooled: Path, segments: Segments, overwrite: bool, size: int,
             sha256: str) -> Stored:
        self._refuse_files_above(segments[:-1])
        path = "/".join(segments)
        if self.client.list_page(self.key(segments) + "/", None, None, max_keys=1).objects:
            raise Conflict(f"{path} is a collection")
        replaced = self.client.head(self.key(segments)) is not None
        if replaced and not overwrite:
            raise Conflict(f"{path} exists and artifacts are immutable (allow_overwrite is off)")
        headers = {"content-length": str(size), "content-type": "application/octet-stream"}
        if not overwrite:
            # Servers with conditional writes refuse with 412 when another upload won the
            # race since the HEAD above; a server that ignores If-None-Match lets the later
            # of two concurrent first uploads win.
            headers["if-none-match"] = "*"
        with open(spooled, "rb") as body:
            status, _, _ = self.client.call("PUT", self.key(segments), headers=headers,
                                            body=body, payload_sha256=sha256,
                                            expected=(200, 412))
        if status == 412:
            raise Conflict(f"{path} exists and artifacts are immutable (allow_overwrite is off)")
        return Stored(size, sha256, time.time(), replaced)

    def _refuse_files_above(self, segments: Segments) -> None:
        for depth in range(1, len(segments) + 1):
            if self.client.head(self.key(segments[:depth])) is not None:
                raise Conflict(f"{'/'.join(segments[:depth])} is a file")

    def thd_mkcol(self, segments: Segments, implicit_parents: int) -> None:
        """MKCOL: create one collection; parents may be missing only in the first
        ``implicit_parents`` segments, else :class:`Conflict`."""
        if self.thd_stat(segments) is not None:
            raise NotAllowed(f"{'/'.join(segments)} exists")
        parent = segments[:-1]
        self._refuse_files_above(parent)
        if len(parent) > implicit_parents:
            entry = self.thd_stat(parent)
            if entry is None or not entry.is_dir:
                raise Conflict(f"the parent collection of {'/'.join(segments)} does not exist")
        self.client.call("PUT", self._collection_key(segments))

    def thd_delete(self, segments: Segments) -> bool:
        """Delete the object or every object under the collection at ``segments``; False if
        nothing was there."""
        existing = self.thd_stat(segments)
        if existing is None:
            return False
        if not existing.is_dir:
            self.client.call("DELETE", self.key(segments), expected=(204, 200, 404))
            return True
        prefix = self._collection_key(segments)
        while True:
            page = self.client.list_page(prefix, None, None, self.page_size)
            for listed in page.objects:
                self.client.call("DELETE", listed.key, expected=(204, 200, 404))
            if page.next_token is None:
                return True

    def thd_staging_dir(self) -> Path:
        """A new private directory inside :attr:`tmp_dir` for files on their way in."""
        return Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="stage-"))

