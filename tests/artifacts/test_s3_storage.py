"""The S3 storage backend called directly (on this thread, as the thread pool would), against
moto's real S3 server with signature checking on: listings by pages, staging copies,
conditional writes, multipart uploads, and credentials from the standard chain."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from botocore.utils import parse_timestamp

from buildbot_farm.artifacts.s3 import MAX_PARTS, S3Storage, part_size_for
from buildbot_farm.artifacts.s3_config import MIN_PART_SIZE, S3Bucket
from buildbot_farm.artifacts.s3client import S3Refused, s3_timestamp
from buildbot_farm.artifacts.storage import Conflict, NotFound
from tests.artifacts.test_s3 import PAYLOAD, Bucket
from tests.harness.s3_server import REGION, S3Server
from tests.harness.twisted_reactor import reactor

GIB = 1024 * 1024 * 1024


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server, shared by this module's tests (each uses its own bucket)."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3_server: S3Server) -> Bucket:
    """An empty bucket of its own for one test."""
    return Bucket(s3_server)


def prepared(config: S3Bucket, spool: Path) -> S3Storage:
    """A storage on ``config`` with its spool under ``spool``, checked against the bucket."""
    storage = S3Storage(config, spool, reactor)
    storage.thd_prepare()
    return storage


def test_listing_and_delete_follow_pages(bucket: Bucket, tmp_path: Path) -> None:
    """With two keys per page, a listing sees every entry and DELETE removes every object."""
    storage = S3Storage(bucket.config, tmp_path, reactor, page_size=2)
    storage.thd_prepare()
    for name in ("a", "b", "c", "d", "e"):
        bucket.boto.put_object(Bucket=bucket.name, Key=f"bin/p/1/{name}", Body=name.encode())
    bucket.boto.put_object(Bucket=bucket.name, Key="bin/p/1/sub/f", Body=b"f")
    bucket.boto.put_object(Bucket=bucket.name, Key="bin/p/2/keep", Body=b"k")
    listed = storage.thd_list(("bin", "p", "1"))
    assert [(e.name, e.is_dir) for e in listed] == [
        ("a", False), ("b", False), ("c", False), ("d", False), ("e", False), ("sub", True)
    ]
    assert storage.thd_delete(("bin", "p", "1")) is True
    assert bucket.keys() == ["bin/p/2/keep"]


def test_an_object_is_fetched_to_a_staging_copy_that_goes_when_closed(
    bucket: Bucket, tmp_path: Path
) -> None:
    """thd_open copies an object into the staging directory, readable from its start, and the
    copy is gone once closed; a missing object is NotFound and leaves nothing behind."""
    storage = prepared(bucket.config, tmp_path)
    bucket.boto.put_object(Bucket=bucket.name, Key="bin/p/1/big", Body=PAYLOAD * 100)
    staging = storage.thd_staging_dir()
    with storage.thd_open(("bin", "p", "1", "big"), staging) as copy:
        assert hashlib.sha256(copy.read()).hexdigest() == hashlib.sha256(PAYLOAD * 100).hexdigest()
    assert list(staging.iterdir()) == []
    with pytest.raises(NotFound, match="no artifact file at /bin/p/1/gone"):
        storage.thd_open(("bin", "p", "1", "gone"), staging)
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize("size", [4, MIN_PART_SIZE + 1], ids=["one PUT", "multipart"])
def test_a_put_that_loses_the_race_is_refused_by_the_server(
    bucket: Bucket, tmp_path: Path, size: int
) -> None:
    """An object created between the existence check and the upload is kept: the PUT, or the
    multipart upload's completion, is conditional (If-None-Match: *) and nothing is left over."""
    config = dataclasses.replace(bucket.config, part_size=MIN_PART_SIZE)
    storage = prepared(config, tmp_path)
    bucket.boto.put_object(Bucket=bucket.name, Key="bin/r/1/f", Body=b"early")
    late = tmp_path / "late"
    late.write_bytes(b"l" * size)
    sha256 = hashlib.sha256(late.read_bytes()).hexdigest()
    assert storage.upload(late, "bin/r/1/f", size, sha256, overwrite=False) is False
    assert bucket.read("bin/r/1/f") == b"early"
    assert bucket.boto.list_multipart_uploads(Bucket=bucket.name).get("Uploads", []) == []
    assert storage.upload(late, "bin/r/1/f", size, sha256, overwrite=True) is True
    assert bucket.read("bin/r/1/f") == late.read_bytes()


def test_a_file_above_the_part_size_is_uploaded_in_parts(bucket: Bucket, tmp_path: Path) -> None:
    """A file of two and a bit parts goes as a three-part upload (S3's ETag says so) and is
    stored byte for byte; a second upload to the same path is a Conflict."""
    storage = prepared(dataclasses.replace(bucket.config, part_size=MIN_PART_SIZE), tmp_path)
    data = hashlib.sha256(b"parts").digest() * ((2 * MIN_PART_SIZE + 1000) // 32)
    staging = storage.thd_staging_dir()
    (staging / "big").write_bytes(data)
    stored = storage.thd_import(staging / "big", ("bin", "m", "1", "big"), overwrite=False)
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert bucket.read("bin/m/1/big") == data
    etag = bucket.boto.head_object(Bucket=bucket.name, Key="bin/m/1/big")["ETag"]
    assert etag.strip('"').endswith("-3")
    (staging / "again").write_bytes(data)
    with pytest.raises(Conflict, match="immutable"):
        storage.thd_import(staging / "again", ("bin", "m", "1", "big"), overwrite=False)
    assert list(staging.iterdir()) == []


class _Interrupted(Exception):
    """Raised by the test in the middle of a multipart upload."""


def test_a_file_over_5_gib_goes_in_parts_and_an_interrupted_upload_leaves_nothing(
    bucket: Bucket, tmp_path: Path
) -> None:
    """A sparse file of 5 GiB + 1 byte (more than one PUT may carry) starts a multipart upload
    in parts of the configured size; cut off after three parts it is aborted: no object and
    no pending upload remain. The parts' plan respects S3's 10,000-part limit."""
    storage = prepared(dataclasses.replace(bucket.config, part_size=MIN_PART_SIZE), tmp_path)
    huge = tmp_path / "huge"
    with open(huge, "wb") as sparse:
        sparse.truncate(5 * GIB + 1)
    sent: list[tuple[int, int]] = []
    pending: list[Any] = []

    def before_part(params: dict[str, Any], **_: Any) -> None:
        sent.append((params["PartNumber"], len(params["Body"])))

    def after_part(**_: Any) -> None:
        if len(sent) == 3:
            pending.extend(bucket.boto.list_parts(
                Bucket=bucket.name, Key="bin/h/1/huge",
                UploadId=bucket.boto.list_multipart_uploads(Bucket=bucket.name)["Uploads"][0][
                    "UploadId"])["Parts"])
            raise _Interrupted()

    events = storage.client.boto.meta.events
    events.register("before-parameter-build.s3.UploadPart", before_part)
    events.register("after-call.s3.UploadPart", after_part)
    with pytest.raises(_Interrupted):
        storage.upload(huge, "bin/h/1/huge", 5 * GIB + 1, "0" * 64, overwrite=False)
    assert sent == [(1, MIN_PART_SIZE), (2, MIN_PART_SIZE), (3, MIN_PART_SIZE)]
    assert [(part["PartNumber"], part["Size"]) for part in pending] == sent
    assert bucket.keys() == []
    assert bucket.boto.list_multipart_uploads(Bucket=bucket.name).get("Uploads", []) == []
    assert part_size_for(5 * GIB + 1, MIN_PART_SIZE) == MIN_PART_SIZE
    assert -(-100 * GIB // part_size_for(100 * GIB, MIN_PART_SIZE)) <= MAX_PARTS


class _Flaky(BaseHTTPRequestHandler):
    """Answers the first ``server.failures`` requests with S3's 503 SlowDown, then relays
    each request as it came (Host header included, so the signature holds) to moto."""

    server: Any

    def _relay(self) -> None:
        self.server.seen += 1
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.server.seen <= self.server.failures:
            error = b"<Error><Code>SlowDown</Code><Message>Reduce your rate</Message></Error>"
            self.send_response(503)
            self.send_header("content-length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=30)
        upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("content-length", "transfer-encoding", "connection",
                                    "server", "date"):
                self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _relay  # noqa: N815 (http.server's)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def flaky(s3_server: S3Server) -> Iterator[Any]:
    """A loopback proxy to moto that fails its first ``failures`` requests with 503."""
    proxy: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    proxy.upstream_port, proxy.seen, proxy.failures = s3_server.port, 0, 0
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()
    thread.join()


def test_requests_are_retried_up_to_attempts(bucket: Bucket, tmp_path: Path, flaky: Any) -> None:
    """A 503 SlowDown is retried with backoff: with attempts=3 two refusals are overcome, with
    attempts=1 the first one is the error (naming S3's code)."""
    bucket.boto.put_object(Bucket=bucket.name, Key="bin/t/1/f", Body=b"f")
    endpoint = f"http://127.0.0.1:{flaky.server_address[1]}"
    storage = prepared(dataclasses.replace(bucket.config, endpoint=endpoint), tmp_path)
    flaky.seen, flaky.failures = 0, 2
    assert storage.thd_digest(("bin", "t", "1", "f")) == (1, hashlib.sha256(b"f").hexdigest())
    assert flaky.seen == 3
    once = S3Storage(dataclasses.replace(bucket.config, endpoint=endpoint, attempts=1),
                     tmp_path / "once", reactor)
    flaky.seen, flaky.failures = 0, 1
    with pytest.raises(S3Refused, match="503 SlowDown"):
        once.thd_digest(("bin", "t", "1", "f"))
    assert flaky.seen == 1


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """An environment where boto3's credential chain finds nothing but what a test sets:
    no shared files, no container or instance roles (nothing beyond loopback is asked)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def test_without_keys_the_credentials_come_from_the_environment(
    bucket: Bucket, s3_server: S3Server, tmp_path: Path, aws_environment: pytest.MonkeyPatch
) -> None:
    """S3Bucket without keys signs with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (moto checks
    the signatures); a wrong secret there is refused, and none at all is a clear error."""
    keyless = S3Bucket(endpoint=s3_server.endpoint, bucket=bucket.name, region=REGION)
    assert keyless.problems() == []
    with pytest.raises(S3Refused, match=r"no credentials .*AWS_ACCESS_KEY_ID"):
        prepared(keyless, tmp_path / "none")
    aws_environment.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    aws_environment.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(S3Refused, match="refuses these credentials"):
        prepared(keyless, tmp_path / "wrong")
    aws_environment.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    storage = prepared(keyless, tmp_path / "right")
    stored = storage.thd_store(("bin", "e", "1", "f"), io.BytesIO(PAYLOAD), len(PAYLOAD), None,
                               overwrite=False)
    assert stored.sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert bucket.read("bin/e/1/f") == PAYLOAD
    assert storage.thd_digest(("bin", "e", "1", "f")) == (len(PAYLOAD), stored.sha256)
    url, headers = storage.thd_signed_get(("bin", "e", "1", "f"), {"range": "bytes=0-4"})
    assert url == f"{s3_server.endpoint}/{bucket.name}/bin/e/1/f"
    assert f"Credential={s3_server.access_key}/" in headers["Authorization"]


@pytest.mark.parametrize("text", [
    "Wed, 01 May 2024 12:00:00 GMT", "2024-05-01T12:00:00.000Z", "2024-05-01T12:00:00Z",
    "2024-05-01T12:00:00.123456Z", "2024-05-01T14:00:00+02:00", "Wed, 01 May 2024 12:00:00 -0000",
    1714564800, "1714564800",
])
def test_s3_times_are_read_as_botocore_reads_them(text: object) -> None:
    """Every form of time S3 answers with is the same moment botocore's own parser finds."""
    assert s3_timestamp(text).timestamp() == parse_timestamp(text).timestamp()
    assert s3_timestamp(text).tzinfo is not None
