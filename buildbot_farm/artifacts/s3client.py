"""The boto3 client of one bucket, and S3's failures as the repository's errors.

boto3 is blocking: every call here runs from a ``thd_*`` function on the reactor's thread
pool, as the Docker SDK does elsewhere. botocore signs (SigV4), retries with backoff
(``S3Bucket(attempts=)``, its "standard" mode) and finds credentials: the bucket's keys
when given, else the standard chain (environment, shared files, web identity, container
and instance roles). Times in S3's answers are read by :func:`s3_timestamp`.
"""

from __future__ import annotations

import datetime
import email.utils
import threading
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import boto3
import botocore.session
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.utils import parse_timestamp

from buildbot_farm.artifacts.s3_config import S3Bucket
from buildbot_farm.artifacts.storage import StorageError

T = TypeVar("T")


def s3_timestamp(value: Any) -> datetime.datetime:
    """A time in an S3 answer: an HTTP date in headers (``Last-Modified``), ISO 8601 with
    ``Z`` in XML (listings); anything else through botocore's own parser.

    botocore's default parser (dateutil's, which reads any format) costs about ten times
    as much, once per HEAD and once per object of a listing.
    """
    if isinstance(value, str):
        try:
            if value.endswith("Z"):
                return datetime.datetime.fromisoformat(value[:-1]).replace(
                    tzinfo=datetime.timezone.utc)
            parsed = email.utils.parsedate_to_datetime(value)
            if parsed.tzinfo is not None:
                return parsed
        except (TypeError, ValueError):
            pass
    return parse_timestamp(value)


class S3Unavailable(StorageError):
    """The S3 endpoint could not be reached or did not answer as S3 does."""

    status = 503


class S3Refused(StorageError):
    """The S3 endpoint refused a request (credentials, bucket, or a server error);
    ``answered`` is S3's HTTP status (None when no request was sent)."""

    status = 502

    def __init__(self, message: str, answered: int | None = None) -> None:
        super().__init__(message)
        self.answered = answered


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


class S3Client:
    """boto3 calls on one bucket, each turning S3's failures into :class:`S3Unavailable`
    (unreachable, after the retries) or :class:`S3Refused` (an answer with an error)."""

    def __init__(self, bucket: S3Bucket) -> None:
        self.bucket = bucket
        self._lock = threading.Lock()
        self._session: Any = None
        self._boto: Any = None

    @property
    def boto(self) -> Any:
        """The boto3 client, made on first use: that blocks (it reads botocore's models and
        may walk the credential chain), so it happens on the thread pool, not the reactor."""
        return self._made()[1]

    def _made(self) -> tuple[Any, Any]:
        """The boto3 session and client, made once."""
        with self._lock:
            if self._boto is None:
                core = botocore.session.get_session()
                core.get_component("response_parser_factory").set_parser_defaults(
                    timestamp_parser=s3_timestamp)
                self._session = boto3.session.Session(
                    botocore_session=core,
                    aws_access_key_id=self.bucket.access_key,
                    aws_secret_access_key=self.bucket.secret_key,
                    region_name=self.bucket.region,
                )
                self._boto = self._session.client(
                    "s3", endpoint_url=self.bucket.endpoint, config=Config(
                        signature_version="s3v4", s3={"addressing_style": "path"},
                        connect_timeout=self.bucket.timeout, read_timeout=self.bucket.timeout,
                        retries={"mode": "standard", "total_max_attempts": self.bucket.attempts},
                    ))
            return self._session, self._boto

    def call(self, operation: str, key: str | None, method: Callable[..., T],
             **arguments: Any) -> T:
        """``method(Bucket=..., [Key=key,] **arguments)``, S3's failures translated;
        ``operation`` names the request in messages (``"PUT"``, ``"list"``)."""
        if key is not None:
            arguments["Key"] = key
        try:
            return method(Bucket=self.bucket.bucket, **arguments)
        except ClientError as e:
            raise self.refusal(operation, key, e) from e
        except NoCredentialsError as e:
            raise self.no_credentials() from e
        except BotoCoreError as e:
            raise S3Unavailable(
                f"the S3 endpoint {self.bucket.endpoint} is unreachable"
                f" ({type(e).__name__}: {e}); nothing was changed"
            ) from e

    def no_credentials(self) -> S3Refused:
        """The error when neither the bucket nor the standard chain gives credentials."""
        return S3Refused(
            f"no credentials for the S3 endpoint {self.bucket.endpoint}: give"
            " S3Bucket(access_key=..., secret_key=...) or set up the standard chain"
            " (AWS_ACCESS_KEY_ID, ~/.aws/credentials, an instance or web identity role)"
        )

    def refusal(self, operation: str, key: str | None, error: ClientError) -> S3Refused:
        """The error for S3's refusal ``error``, with its status, code and message."""
        answer = error.response
        status = answer.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        detail = answer.get("Error", {})
        return self.refused(operation, key, status, detail.get("Code", ""),
                            detail.get("Message", ""))

    def refused(self, operation: str, key: str | None, status: int, code: str,
                message: str) -> S3Refused:
        """The error for an unexpected answer ``status`` with S3's ``code`` and ``message``."""
        where = f"{self.bucket.bucket}/{key}" if key is not None else self.bucket.bucket
        return S3Refused(f"the S3 endpoint {self.bucket.endpoint} answered {operation} {where}"
                         f" with {status} {code}: {message}".rstrip(": "), status)

    def refused_body(self, operation: str, key: str, status: int, body: bytes) -> S3Refused:
        """The error for an answer ``status`` whose ``body`` is S3's XML error document."""
        code, message = "", ""
        try:
            root = ElementTree.fromstring(body)
            code = root.findtext("Code") or ""
            message = root.findtext("Message") or ""
        except ElementTree.ParseError:
            message = body[:200].decode(errors="replace")
        return self.refused(operation, key, status, code, message)

    def head(self, key: str) -> dict[str, Any] | None:
        """HeadObject of ``key``; None when it does not exist."""
        try:
            return self.call("HEAD", key, self.boto.head_object)
        except S3Refused as e:
            if e.answered == 404:
                return None
            raise

    def list_page(self, prefix: str, delimiter: str | None, token: str | None,
                  max_keys: int = 1000) -> ListedPage:
        """One page of the objects whose keys start with ``prefix``."""
        arguments: dict[str, Any] = {"Prefix": prefix, "MaxKeys": max_keys}
        if delimiter:
            arguments["Delimiter"] = delimiter
        if token:
            arguments["ContinuationToken"] = token
        page = self.call("list", None, self.boto.list_objects_v2, **arguments)
        objects = [ListedObject(item["Key"], int(item.get("Size", 0)),
                                item["LastModified"].timestamp())
                   for item in page.get("Contents", [])]
        prefixes = [item["Prefix"] for item in page.get("CommonPrefixes", [])]
        next_token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
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

    def signed_get(self, key: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """The URL and botocore-signed headers of a GET of object ``key`` (plus ``headers``),
        for a client other than boto3 to send. Blocks: credentials may be fetched."""
        credentials = self._made()[0].get_credentials()
        if credentials is None:
            raise self.no_credentials()
        url = (f"{self.bucket.endpoint.rstrip('/')}/{self.bucket.bucket}/"
               f"{quote(key, safe='/~')}")
        request = AWSRequest("GET", url, headers=headers)
        S3SigV4Auth(credentials.get_frozen_credentials(), "s3", self.bucket.region
                    ).add_auth(request)
        return url, {name: str(value) for name, value in request.headers.items()}
