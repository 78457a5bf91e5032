"""A small blocking S3 client over ``http.client``, signed with :mod:`sigv4`.

Only what the artifact storage needs: HEAD/GET/PUT/DELETE of one object and paginated
ListObjectsV2. Every method blocks (call it from a ``thd_*`` function); each request uses
its own connection, so threads never share one. Failures to reach the endpoint, and
answers that are not S3's, become :class:`S3Unavailable` naming the endpoint.
"""

from __future__ import annotations

import http.client
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import BinaryIO
from urllib.parse import urlsplit

from buildbot_farm.artifacts import sigv4
from buildbot_farm.artifacts.s3_config import S3Bucket
from buildbot_farm.artifacts.storage import StorageError

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
BLOCK = 1024 * 1024


class S3Unavailable(StorageError):
    """The S3 endpoint could not be reached or did not answer as S3 does."""

    status = 503


class S3Refused(StorageError):
    """The S3 endpoint refused a request (credentials, bucket, or a server error)."""

    status = 502


@dataclass(frozen=True)
class ListedObject:
    """One object of a listing: its full key, size and modification time."""

    key: str
    size: int
    modified: float


@dataclass(frozen=True)
class ListedPage:
    """One page of ListObjectsV2: objects, common prefixes, and the next page's token."""

    objects: list[ListedObject]
    prefixes: list[str]
    next_token: str | None


def http_time(value: str | None) -> float:
    """A ``Last-Modified`` header as a timestamp (0 when absent)."""
    return parsedate_to_datetime(value).timestamp() if value else 0.0


def iso_time(value: str) -> float:
    """An S3 listing's ``2026-11-22T04:30:00.000Z`` as a timestamp."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


class S3Client:
    """Signed requests to one bucket of an S3-compatible service."""

    def __init__(self, bucket: S3Bucket) -> None:
        self.bucket = bucket
        parts = urlsplit(bucket.endpoint)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._netloc = parts.netloc.rpartition("@")[2]
        self._base = parts.path.rstrip("/")
        self._credentials = sigv4.Credentials(bucket.access_key, bucket.secret_key, bucket.region)

    def signed(
        self, method: str, key: str | None, query: list[tuple[str, str]],
        headers: Mapping[str, str], payload_sha256: str = sigv4.EMPTY_SHA256,
    ) -> tuple[str, dict[str, str]]:
        """The request target (path and query, encoded) and the signed headers for a request
        on object ``key`` (None: the bucket itself)."""
        path = f"{self._base}/{self.bucket.bucket}" + ("" if key is None else "/" + key)
        all_headers = sigv4.sign(
            self._credentials, method, path, query, {"host": self._netloc, **headers},
            payload_sha256, datetime.now(timezone.utc),
        )
        target = sigv4.uri_encode(path, keep_slash=True)
        encoded_query = sigv4.canonical_query(query)
        return target + ("?" + encoded_query if encoded_query else ""), all_headers

    def url(self, target: str) -> str:
        """The absolute URL of a request target from :meth:`signed`."""
        return f"{'https' if self._https else 'http'}://{self._netloc}{target}"

    def open(
        self, method: str, key: str | None, query: list[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None, body: BinaryIO | bytes | None = None,
        payload_sha256: str = sigv4.EMPTY_SHA256,
    ) -> http.client.HTTPResponse:
        """Send a request and return the response unread; the caller closes it."""
        target, signed = self.signed(method, key, query or [], headers or {}, payload_sha256)
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = kind(self._host, self._port, timeout=self.bucket.timeout,
                                      blocksize=BLOCK)
        if body is None and method in ("PUT", "POST"):
            body = b""
        try:
            connection.request(method, target, body=body, headers=signed)
            return connection.getresponse()
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            raise S3Unavailable(
                f"the S3 endpoint {self.bucket.endpoint} is unreachable"
                f" ({type(e).__name__}: {e}); nothing was changed"
            ) from e

    def call(
        self, method: str, key: str | None, query: list[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None, body: BinaryIO | bytes | None = None,
        payload_sha256: str = sigv4.EMPTY_SHA256, expected: tuple[int, ...] = (200,),
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """Send a request, read the whole (small) answer; status, headers and body.

        A status outside ``expected`` raises :class:`S3Refused` with S3's error code.
        """
        response = self.open(method, key, query, headers, body, payload_sha256)
        try:
            data = response.read()
        except (OSError, http.client.HTTPException) as e:
            raise S3Unavailable(f"the S3 endpoint {self.bucket.endpoint} broke off its"
                                f" answer ({e})") from e
        finally:
            response.close()
        if response.status not in expected:
            raise self.refusal(method, key, response.status, data)
        return response.status, response.headers, data

    def refusal(self, method: str, key: str | None, status: int, body: bytes) -> S3Refused:
        """The error for an unexpected answer, with S3's error code and message."""
        code, message = "", ""
        try:
            root = ElementTree.fromstring(body)
            code = root.findtext("Code") or ""
            message = root.findtext("Message") or ""
        except ElementTree.ParseError:
            message = body[:200].decode(errors="replace")
        where = f"{self.bucket.bucket}/{key}" if key is not None else self.bucket.bucket
        return S3Refused(
            f"the S3 endpoint {self.bucket.endpoint} answered {method} {where} with"
            f" {status} {code}: {message}".rstrip(": ")
        )

    def head(self, key: str) -> http.client.HTTPMessage | None:
        """The headers of object ``key``; None when it does not exist."""
        status, headers, _ = self.call("HEAD", key, expected=(200, 404))
        return headers if status == 200 else None

    def list_page(self, prefix: str, delimiter: str | None, token: str | None,
                  max_keys: int = 1000) -> ListedPage:
        """One page of the objects whose keys start with ``prefix``."""
        query = [("list-type", "2"), ("prefix", prefix), ("max-keys", str(max_keys))]
        if delimiter:
            query.append(("delimiter", delimiter))
        if token:
            query.append(("continuation-token", token))
        _, _, body = self.call("GET", None, query)
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError as e:
            raise S3Unavailable(f"the S3 endpoint {self.bucket.endpoint} sent a listing that"
                                f" is not XML ({e})") from e
        objects = [
            ListedObject(item.findtext(f"{_NS}Key") or "", int(item.findtext(f"{_NS}Size") or 0),
                         iso_time(item.findtext(f"{_NS}LastModified") or "1970-01-01T00:00:00Z"))
            for item in root.iter(f"{_NS}Contents")
        ]
        prefixes = [item.findtext(f"{_NS}Prefix") or ""
                    for item in root.iter(f"{_NS}CommonPrefixes")]
        truncated = root.findtext(f"{_NS}IsTruncated") == "true"
        next_token = root.findtext(f"{_NS}NextContinuationToken") if truncated else None
        return ListedPage(objects, prefixes, next_token)

    def list_all(self, prefix: str, delimiter: str | None, page_size: int = 1000,
                 ) -> Iterator[ListedPage]:
        """Every page of the listing of ``prefix``, following continuation tokens."""
        token: str | None = None
        while True:
            page = self.list_page(prefix, delimiter, token, page_size)
            yield page
            if page.next_token is None:
                return
            token = page.next_token
