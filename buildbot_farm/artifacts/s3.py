"""Artifacts in an S3-compatible bucket, behind the same blocking ``thd_*`` contract as
:class:`~buildbot_farm.artifacts.storage.LocalStorage`, through boto3 (:mod:`.s3client`).

S3 has objects, not directories. A collection is any key prefix ending in ``/`` that some
object starts with; MKCOL writes an empty marker object ``PATH/`` so an empty collection
exists too. An upload is spooled to a local temporary file (hashing and size-checking it
on the way) before it is sent: in one PUT carrying its sha256, which S3 checks, or, above
``S3Bucket(part_size=)``, as a multipart upload that is completed only once every part
is in (and aborted otherwise). An upload cut off half-way, too large or with the wrong
digest never reaches the bucket, and S3 shows an object only once it is complete.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from botocore.exceptions import BotoCoreError

from buildbot_farm.artifacts.paths import RESERVED_PREFIX, Segments
from buildbot_farm.artifacts.s3_config import S3Bucket
from buildbot_farm.artifacts.s3client import S3Client, S3Refused, S3Unavailable
from buildbot_farm.artifacts.storage import (
    CHUNK,
    TMP_DIR,
    Conflict,
    Entry,
    NotAllowed,
    NotFound,
    SpoolingStorage,
    Stored,
    check_digest,
    file_sha256,
)

MAX_PARTS = 10_000


def part_size_for(size: int, part_size: int) -> int:
    """The part size for a file of ``size`` bytes: ``part_size``, or larger when S3's limit
    of 10,000 parts would not hold the file."""
    return max(part_size, -(-size // MAX_PARTS))


class S3Storage(SpoolingStorage):
    """Artifacts as objects in ``bucket``; ``spool`` is a local directory for uploads in flight.

    Listings ask for ``page_size`` keys at a time (S3's maximum is 1000); times of
    collections (S3 keeps none) come from ``clock`` (the reactor).
    """

    def __init__(self, bucket: S3Bucket, spool: Path, clock: Any, page_size: int = 1000) -> None:
        self.bucket = bucket
        self.page_size = page_size
        self.client = S3Client(bucket)
        self._clock = clock
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
        try:
            self.client.call("HEAD", None, self.client.boto.head_bucket)
        except S3Refused as e:
            if e.answered not in (403, 404):
                raise
            raise S3Refused(
                f"the bucket {self.bucket.bucket!r} at {self.bucket.endpoint}"
                f" {'does not exist' if e.answered == 404 else 'refuses these credentials'};"
                " create it or fix S3Bucket(...)"
            ) from e

    def thd_stat(self, segments: Segments) -> Entry | None:
        """What is at ``segments``: an object, a collection (some key below it), or None."""
        name = segments[-1] if segments else ""
        if not segments:
            return Entry(name, True, 0, self._clock.seconds())
        head = self.client.head(self.key(segments))
        if head is not None:
            return Entry(name, False, int(head.get("ContentLength", 0)),
                         head["LastModified"].timestamp())
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
        now = self._clock.seconds()
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
        try:
            body = self.client.call("GET", key, self.client.boto.get_object)["Body"]
        except S3Refused as e:
            if e.answered == 404:
                raise NotFound(f"no artifact file at /{'/'.join(segments)}") from e
            raise
        try:
            yield from body.iter_chunks(CHUNK)
        except (OSError, BotoCoreError) as e:
            raise S3Unavailable(f"the S3 endpoint {self.bucket.endpoint} broke off"
                                f" the object {key} ({type(e).__name__}: {e})") from e
        finally:
            body.close()

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
        if not self.upload(spooled, self.key(segments), size, sha256, overwrite):
            raise Conflict(f"{path} exists and artifacts are immutable (allow_overwrite is off)")
        return Stored(size, sha256, self._clock.seconds(), replaced)

    def upload(self, local: Path, key: str, size: int, sha256: str, overwrite: bool) -> bool:
        """Send the local file ``local`` (``size`` bytes) to ``key``: in one PUT, or in parts
        above ``part_size``. False when ``overwrite`` is off and S3 refused because ``key``
        exists (412).

        Without ``overwrite`` the write is conditional (``If-None-Match: *``): servers with
        conditional writes refuse when another upload won the race since the caller's
        check; a server that ignores it lets the later of two concurrent first uploads win.
        """
        condition = {} if overwrite else {"IfNoneMatch": "*"}
        try:
            if size <= self.bucket.part_size:
                with open(local, "rb") as body:
                    self.client.call(
                        "PUT", key, self.client.boto.put_object, Body=body, ContentLength=size,
                        ContentType="application/octet-stream",
                        ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
                        **condition)
            else:
                self._upload_parts(local, key, size, condition)
        except S3Refused as e:
            if e.answered == 412 and not overwrite:
                return False
            raise
        return True

    def _upload_parts(self, local: Path, key: str, size: int, condition: dict[str, str]) -> None:
        """A multipart upload of ``local``; aborted, leaving nothing, when any step fails."""
        boto = self.client.boto
        started = self.client.call("PUT", key, boto.create_multipart_upload,
                                   ContentType="application/octet-stream",
                                   ChecksumAlgorithm="SHA256")
        upload_id = started["UploadId"]
        part_size = part_size_for(size, self.bucket.part_size)
        try:
            parts = []
            with open(local, "rb") as source:
                for number in range(1, -(-size // part_size) + 1):
                    data = source.read(part_size)
                    answer = self.client.call(
                        "PUT", key, boto.upload_part, UploadId=upload_id, PartNumber=number,
                        Body=data, ChecksumSHA256=_b64_sha256(data))
                    parts.append({"PartNumber": number, "ETag": answer["ETag"],
                                  "ChecksumSHA256": answer.get("ChecksumSHA256")
                                  or _b64_sha256(data)})
            self.client.call("PUT", key, boto.complete_multipart_upload, UploadId=upload_id,
                             MultipartUpload={"Parts": parts}, **condition)
        except BaseException:
            # When even the abort fails, the bucket's lifecycle rule for incomplete
            # multipart uploads drops the parts.
            with contextlib.suppress(S3Refused, S3Unavailable):
                self.client.call("DELETE", key, boto.abort_multipart_upload, UploadId=upload_id)
            raise

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
        self.client.call("PUT", self._collection_key(segments), self.client.boto.put_object,
                         Body=b"")

    def thd_delete(self, segments: Segments) -> bool:
        """Delete the object or every object under the collection at ``segments``; False if
        nothing was there."""
        existing = self.thd_stat(segments)
        if existing is None:
            return False
        if not existing.is_dir:
            self._delete(self.key(segments))
            return True
        prefix = self._collection_key(segments)
        while True:
            page = self.client.list_page(prefix, None, None, self.page_size)
            for listed in page.objects:
                self._delete(listed.key)
            if page.next_token is None:
                return True

    def _delete(self, key: str) -> None:
        self.client.call("DELETE", key, self.client.boto.delete_object)

    def thd_signed_get(self, segments: Segments, headers: dict[str, str],
                       ) -> tuple[str, dict[str, str]]:
        """The URL and signed headers of a GET of the object ``segments`` (with ``headers``,
        such as a Range) for the reactor's HTTP client to send."""
        return self.client.signed_get(self.key(segments), headers)

    def refusal(self, status: int, segments: Segments, body: bytes) -> S3Refused:
        """The error for S3's answer ``status`` with ``body`` to a GET of ``segments``."""
        return self.client.refused_body("GET", self.key(segments), status, body)


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()

