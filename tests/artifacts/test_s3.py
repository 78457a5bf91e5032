"""The repository on S3 storage, over real HTTP on loopback, against moto's real S3 server.

What is in the bucket is checked with a boto3 client of the test's own, not the repository's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
import pytest
import pytest_twisted
from buildbot.process.properties import Interpolate, Secret
from twisted.internet import endpoints, task

from buildbot_farm.artifacts.config import ArtifactRepository
from buildbot_farm.artifacts.s3 import S3Storage
from buildbot_farm.artifacts.s3_config import S3Bucket
from buildbot_farm.artifacts.s3client import S3Refused
from buildbot_farm.secret_values import SecretRenderer
from tests.artifacts.conftest import RunningRepository, StartRepository, basic, curl
from tests.artifacts.test_bad_input import _HalfUpload
from tests.harness.s3_server import REGION, S3Server
from tests.harness.twisted_reactor import reactor

PAYLOAD = b"hello object storage\n" * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()
_names = itertools.count()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server, shared by this module's tests (each uses its own bucket)."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log").start()
    yield server
    server.stop()


class Bucket:
    """A fresh bucket on a server, seen through boto3."""

    def __init__(self, server: S3Server, prefix: str = "") -> None:
        self.name = f"farm-test-{next(_names)}"
        self.boto = boto3.client(
            "s3", endpoint_url=server.endpoint, region_name=REGION,
            aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
        )
        self.boto.create_bucket(Bucket=self.name)
        self.config = S3Bucket(endpoint=server.endpoint, bucket=self.name,
                               access_key=server.access_key, secret_key=server.secret_key,
                               region=REGION, prefix=prefix)

    def keys(self) -> list[str]:
        """Every object key in the bucket."""
        pages = self.boto.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        """The content of object ``key``."""
        body: bytes = self.boto.get_object(Bucket=self.name, Key=key)["Body"].read()
        return body


@pytest.fixture
def bucket(s3_server: S3Server) -> Bucket:
    """An empty bucket of its own for one test."""
    return Bucket(s3_server)


async def on_s3(start: StartRepository, bucket: Bucket, **settings: Any) -> RunningRepository:
    """A repository on loopback keeping its files in ``bucket``."""
    return await start(storage=bucket.config, **settings)


def spooled_files(repo: RunningRepository) -> list[Path]:
    """Files left in the repository's local spool directory."""
    return [p for p in repo.root.rglob("*") if p.is_file()]


@pytest_twisted.ensureDeferred
async def test_put_then_get_head_range_and_etag(
    start_repository: StartRepository, bucket: Bucket
) -> None:
    """An upload lands in the bucket and is streamed back with sha256 ETag, length, time, ranges."""
    repo = await on_s3(start_repository, bucket)
    put = await repo.request("PUT", "bin/hello/3/a/b.txt", data=PAYLOAD,
                             headers=basic(7, await repo.token()))
    assert put.code == 201, put.body
    assert put.json()["sha256"] == SHA
    assert bucket.keys() == ["bin/hello/3/a/b.txt"]
    assert bucket.read("bin/hello/3/a/b.txt") == PAYLOAD
    got = await repo.request("GET", "bin/hello/3/a/b.txt")
    assert got.code == 200
    assert got.body == PAYLOAD
    assert got.header("etag") == f'"{SHA}"'
    assert got.length == len(PAYLOAD)
    assert got.header("last-modified")
    assert got.header("content-type") == "text/plain"
    ranged = await repo.request("GET", "bin/hello/3/a/b.txt", headers={b"range": b"bytes=6-11"})
    assert ranged.code == 206
    assert ranged.body == b"object"
    assert ranged.header("content-range") == f"bytes 6-11/{len(PAYLOAD)}"
    stale = await repo.request("GET", "bin/hello/3/a/b.txt",
                               headers={b"range": b"bytes=6-11", b"if-range": b'"other"'})
    assert stale.code == 200
    assert stale.body == PAYLOAD
    head = await repo.request("HEAD", "bin/hello/3/a/b.txt")
    assert head.code == 200
    assert head.body == b""
    assert head.header("etag") == f'"{SHA}"'
    cached = await repo.request("GET", "bin/hello/3/a/b.txt",
                                headers={b"if-none-match": f'"{SHA}"'.encode()})
    assert cached.code == 304
    assert spooled_files(repo) == []


@pytest_twisted.ensureDeferred
async def test_a_large_object_streams_through_intact(
    start_repository: StartRepository, bucket: Bucket
) -> None:
    """A 24 MiB object comes back byte for byte, and a range deep inside it too."""
    big = hashlib.sha256(b"seed").digest() * (24 * 1024 * 1024 // 32)
    repo = await on_s3(start_repository, bucket)
    put = await repo.request("PUT", "bin/hello/3/big.bin", data=big,
                             headers=basic(7, await repo.token()))
    assert put.code == 201, put.body
    got = await repo.request("GET", "bin/hello/3/big.bin")
    assert got.length == len(big)
    assert hashlib.sha256(got.body).hexdigest() == hashlib.sha256(big).hexdigest()
    tail = await repo.request("GET", "bin/hello/3/big.bin",
                              headers={b"range": b"bytes=20000000-"})
    assert tail.code == 206
    assert tail.body == big[20_000_000:]


@pytest_twisted.ensureDeferred
async def test_listings_in_json_and_html(start_repository: StartRepository, bucket: Bucket) -> None:
    """A prefix lists its objects and sub-prefixes with size, sha256 and URL, as JSON or HTML."""
    repo = await on_s3(start_repository, bucket)
    auth = basic(7, await repo.token())
    await repo.request("PUT", "bin/hello/3/x.bin", data=PAYLOAD, headers=auth)
    await repo.request("PUT", "bin/hello/3/sub/y.bin", data=b"y", headers=auth)
    listing = await repo.request("GET", "bin/hello/3/?format=json")
    assert listing.code == 200, listing.body
    entries = {e["name"]: e for e in listing.json()["entries"]}
    assert set(entries) == {"x.bin", "sub"}
    assert entries["x.bin"]["sha256"] == SHA
    assert entries["x.bin"]["size"] == len(PAYLOAD)
    assert entries["x.bin"]["url"] == repo.url + "bin/hello/3/x.bin"
    assert entries["sub"]["type"] == "collection"
    page = await repo.request("GET", "bin/hello/3/")
    assert page.header("content-type") == "text/html; charset=utf-8"
    assert f'href="{repo.url}bin/hello/3/x.bin"'.encode() in page.body
    assert SHA.encode() in page.body
    root = await repo.request("GET", "?format=json")
    assert [e["name"] for e in root.json()["entries"]] == ["bin"]


@pytest_twisted.ensureDeferred
async def test_objects_written_behind_the_repository_are_hashed_when_listed(
    start_repository: StartRepository, bucket: Bucket
) -> None:
    """An object put into the bucket directly is listed and served with its computed sha256."""
    repo = await on_s3(start_repository, bucket)
    bucket.boto.put_object(Bucket=bucket.name, Key="bin/other/1/direct.bin", Body=PAYLOAD)
    listing = await repo.request("GET", "bin/other/1/?format=json")
    assert listing.json()["entries"][0]["sha256"] == SHA
    got = await repo.request("GET", "bin/other/1/direct.bin")
    assert got.header("etag") == f'"{SHA}"'


@pytest_twisted.ensureDeferred
async def test_mkcol_propfind_and_delete(start_repository: StartRepository, bucket: Bucket) -> None:
    """MKCOL leaves a marker object, PROPFIND depth 0/1 describes, DELETE empties the prefix."""
    repo = await on_s3(start_repository, bucket)
    auth = basic(7, await repo.token())
    made = await repo.request("MKCOL", "dpkg/hello/3/", headers=auth)
    assert made.code == 201, made.body
    assert bucket.keys() == ["dpkg/hello/3/"]
    assert (await repo.request("MKCOL", "dpkg/hello/3/", headers=auth)).code == 405
    assert (await repo.request("MKCOL", "dpkg/hello/3/no/parent/", headers=auth)).code == 409
    empty = await repo.request("PROPFIND", "dpkg/hello/3/", headers={b"depth": b"1"})
    assert empty.code == 207
    assert empty.body.count(b"<D:response>") == 1
    await repo.request("PUT", "dpkg/hello/3/p.deb", data=PAYLOAD, headers=auth)
    await repo.request("PUT", "dpkg/hello/3/deep/er/q.deb", data=b"q", headers=auth)
    zero = await repo.request("PROPFIND", "dpkg/hello/3/", headers={b"depth": b"0"})
    assert zero.code == 207
    assert zero.body.count(b"<D:response>") == 1
    one = await repo.request("PROPFIND", "dpkg/hello/3/", headers={b"depth": b"1"})
    assert one.body.count(b"<D:response>") == 3
    assert f'<D:getetag>"{SHA}"</D:getetag>'.encode() in one.body
    assert b"<D:href>/farm/artifacts/dpkg/hello/3/deep/</D:href>" in one.body
    outside = await repo.request("DELETE", "dpkg/hello/4/", headers=auth)
    assert outside.code == 403
    gone = await repo.request("DELETE", "dpkg/hello/3/", headers=auth)
    assert gone.code == 204, gone.body
    assert bucket.keys() == []
    assert (await repo.request("GET", "dpkg/hello/3/p.deb")).code == 404
    assert (await repo.request("DELETE", "dpkg/hello/3/", headers=auth)).code == 404


@pytest_twisted.ensureDeferred
async def test_existing_objects_stay_unless_overwrite_is_allowed(
    start_repository: StartRepository, s3_server: S3Server
) -> None:
    """A second PUT to the same path is 409 and keeps the first; with allow_overwrite it is 204."""
    immutable, mutable = Bucket(s3_server), Bucket(s3_server)
    repo = await on_s3(start_repository, immutable)
    auth = basic(7, await repo.token())
    assert (await repo.request("PUT", "bin/hello/3/f", data=b"one", headers=auth)).code == 201
    again = await repo.request("PUT", "bin/hello/3/f", data=b"two", headers=auth)
    assert again.code == 409, again.body
    assert "immutable" in again.json()["error"]
    assert immutable.read("bin/hello/3/f") == b"one"
    over = await on_s3(start_repository, mutable, allow_overwrite=True)
    auth = basic(7, await over.token())
    assert (await over.request("PUT", "bin/hello/3/f", data=b"one", headers=auth)).code == 201
    assert (await over.request("PUT", "bin/hello/3/f", data=b"two", headers=auth)).code == 204
    assert (await over.request("GET", "bin/hello/3/f")).body == b"two"


@pytest_twisted.ensureDeferred
async def test_oversize_and_wrong_digest_leave_the_bucket_empty(
    start_repository: StartRepository, bucket: Bucket
) -> None:
    """Too large is 413 and a wrong client digest 400; neither leaves an object or a spool file."""
    repo = await on_s3(start_repository, bucket, max_upload_size=10_000)
    token = await repo.token()
    too_big = await repo.request("PUT", "bin/hello/3/big", data=PAYLOAD,
                                 headers=basic(7, token))
    assert too_big.code == 413, too_big.body
    other = hashlib.sha256(b"other").hexdigest().encode()
    wrong = await repo.request("PUT", "bin/hello/3/d", data=b"data",
                               headers={**basic(7, token), b"x-checksum-sha256": other})
    assert wrong.code == 400, wrong.body
    assert bucket.keys() == []
    assert spooled_files(repo) == []


@pytest_twisted.ensureDeferred
async def test_an_upload_cut_off_leaves_nothing_and_the_retry_works(
    start_repository: StartRepository, bucket: Bucket
) -> None:
    """A connection lost half-way through a PUT puts nothing in the bucket; the retry succeeds."""
    repo = await on_s3(start_repository, bucket)
    token = await repo.token()
    head = (
        b"PUT /farm/artifacts/bin/hello/3/cut HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: " + basic(7, token)[b"authorization"]
        + b"\r\nContent-Length: %d\r\n\r\n" % len(PAYLOAD)
    )
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", repo.port.getHost().port)
    await endpoints.connectProtocol(endpoint, _HalfUpload(head + PAYLOAD[: len(PAYLOAD) // 2]))
    await task.deferLater(reactor, 0.3, lambda: None)
    assert bucket.keys() == []
    assert (await repo.request("GET", "bin/hello/3/cut")).code == 404
    retry = await repo.request("PUT", "bin/hello/3/cut", data=PAYLOAD, headers=basic(7, token))
    assert retry.code == 201, retry.body
    assert bucket.read("bin/hello/3/cut") == PAYLOAD
    assert spooled_files(repo) == []


@pytest.mark.parametrize("path", ["bin/hello/3/../4/f", "bin/hello/3/%2e%2e%2F4/f",
                                  "bin/hello/3/a%5Cb", "bin/hello/3//etc/passwd"])
@pytest_twisted.ensureDeferred
async def test_path_escapes_are_refused(
    start_repository: StartRepository, bucket: Bucket, path: str
) -> None:
    """Dot segments, encoded slashes and backslashes, empty segments: 400 and an empty bucket."""
    repo = await on_s3(start_repository, bucket)
    status, body = await curl("-u", f"build-7:{await repo.token()}", "-T", "/etc/hostname",
                              repo.url + path)
    assert status == 400, body
    assert bucket.keys() == []


@pytest_twisted.ensureDeferred
async def test_a_prefix_keeps_the_repository_inside_it(
    start_repository: StartRepository, s3_server: S3Server
) -> None:
    """With prefix='farm/artifacts', keys live under it and other keys are invisible."""
    bucket = Bucket(s3_server, prefix="farm/artifacts")
    bucket.boto.put_object(Bucket=bucket.name, Key="unrelated/file", Body=b"u")
    repo = await on_s3(start_repository, bucket)
    put = await repo.request("PUT", "bin/hello/3/f", data=b"f",
                             headers=basic(7, await repo.token()))
    assert put.code == 201, put.body
    assert bucket.keys() == ["farm/artifacts/bin/hello/3/f", "unrelated/file"]
    root = await repo.request("GET", "?format=json")
    assert [e["name"] for e in root.json()["entries"]] == ["bin"]


@pytest_twisted.ensureDeferred
async def test_a_stopped_s3_server_gives_a_clear_error(
    start_repository: StartRepository, tmp_path: Path
) -> None:
    """With the S3 server gone, GET and PUT answer 503 naming the endpoint, and nothing hangs."""
    server = S3Server(tmp_path / "moto.log").start()
    try:
        bucket = Bucket(server)
        repo = await on_s3(start_repository, bucket)
        auth = basic(7, await repo.token())
        assert (await repo.request("PUT", "bin/hello/3/f", data=b"f", headers=auth)).code == 201
    finally:
        server.stop()
    for method, data in (("GET", None), ("PUT", b"g")):
        answer = await repo.request(method, "bin/hello/3/f", data=data, headers=auth)
        assert answer.code == 503, answer.body
        error = answer.json()["error"]
        assert server.endpoint in error
        assert "unreachable" in error
    assert spooled_files(repo) == []


@pytest_twisted.ensureDeferred
async def test_a_missing_bucket_stops_the_repository_from_starting(
    start_repository: StartRepository, s3_server: S3Server
) -> None:
    """Starting on a bucket that does not exist fails, naming the bucket and the endpoint."""
    missing = S3Bucket(endpoint=s3_server.endpoint, bucket="farm-no-such-bucket",
                       access_key=s3_server.access_key, secret_key=s3_server.secret_key)
    where = r"'farm-no-such-bucket' at http://127\.0\.0\.1:\d+ does not exist"
    with pytest.raises(S3Refused, match=where):
        await start_repository(storage=missing)


@pytest_twisted.ensureDeferred
async def test_files_from_steps_are_imported_into_the_bucket(
    start_repository: StartRepository, bucket: Bucket
) -> None:
    """A file staged by ArtifactUpload is uploaded, indexed, and its staging file removed."""
    repo = await on_s3(start_repository, bucket)
    storage = repo.repository.storage
    staging = await repo.repository.run_in_thread(storage.thd_staging_dir)
    (staging / "file").write_bytes(PAYLOAD)
    stored = await repo.repository.import_staged(
        staging / "file", ("bin", "hello", "3", "tool"), ("bin", "hello", "3"), 7
    )
    assert stored.sha256 == SHA
    assert bucket.read("bin/hello/3/tool") == PAYLOAD
    assert not (staging / "file").exists()
    assert (await repo.request("GET", "bin/hello/3/tool")).header("etag") == f'"{SHA}"'


def test_settings_are_checked_naming_each_argument() -> None:
    """Bad S3Bucket arguments are reported one by one, and the secret never shows in repr."""
    bad = S3Bucket(endpoint="ftp://x", bucket="No_Such", access_key="", secret_key=" s ",
                   prefix="/abs", timeout=0, part_size=1024, attempts=0)
    found = ArtifactRepository(storage=bad).problems()
    for name in ("endpoint", "bucket", "access_key", "secret_key", "prefix", "timeout",
                 "part_size", "attempts"):
        assert any(f"storage: S3Bucket: {name} " in p for p in found), (name, found)
    one_key = S3Bucket(endpoint="http://127.0.0.1:9000", bucket="artifacts", access_key="k")
    assert [p for p in one_key.problems() if "both access_key and secret_key" in p]
    assert "ArtifactRepository: storage must be util.S3Bucket" in " ".join(
        ArtifactRepository(storage="s3://bucket").problems()  # type: ignore[arg-type]
    )
    good = S3Bucket(endpoint="http://127.0.0.1:9000", bucket="artifacts", access_key="k",
                    secret_key="very-secret")
    assert ArtifactRepository(storage=good).problems() == []
    assert "very-secret" not in repr(good)
    assert ArtifactRepository(storage=dataclasses.replace(
        good, access_key=Secret("a"), secret_key=Interpolate("%(secret:b)s"))).problems() == []


@pytest_twisted.ensureDeferred
async def test_keys_are_rendered_and_an_empty_secret_is_named() -> None:
    """with_secrets renders both keys; a key that renders empty is an error naming it."""
    bucket = S3Bucket(endpoint="http://127.0.0.1:9", bucket="artifacts",
                      access_key=Secret("a"), secret_key=Secret("b"))
    secrets = {"a": "access", "b": " secret\n"}

    async def render(value: Any) -> str:
        return secrets[value.secret_name]

    renderer = SecretRenderer(render)
    rendered = await bucket.with_secrets(renderer)
    assert (rendered.access_key, rendered.secret_key) == ("access", "secret")
    assert renderer.errors == []
    secrets["b"] = ""
    await bucket.with_secrets(renderer)
    assert renderer.errors == ['S3Bucket: secret_key: util.Secret("b") rendered to nothing;'
                               " check the secret"]


@pytest_twisted.ensureDeferred
async def test_the_server_checks_our_signatures(
    start_repository: StartRepository, s3_server: S3Server, bucket: Bucket
) -> None:
    """moto verifies every signature: the right key works, a wrong secret key is refused."""
    repo = await on_s3(start_repository, bucket)
    put = await repo.request("PUT", "bin/hello/3/s", data=b"s",
                             headers=basic(7, await repo.token()))
    assert put.code == 201, put.body
    forged = S3Bucket(endpoint=s3_server.endpoint, bucket=bucket.name,
                      access_key=s3_server.access_key, secret_key="not-the-secret")
    with pytest.raises(S3Refused, match="refuses these credentials"):
        await start_repository(storage=forged)
    storage = S3Storage(forged, repo.root, reactor)
    with pytest.raises(S3Refused, match="SignatureDoesNotMatch"):
        storage.thd_digest(("bin", "hello", "3", "s"))


@pytest_twisted.ensureDeferred
async def test_unusual_names_are_signed_and_stored_as_named(
    start_repository: StartRepository, bucket: Bucket
) -> None:
    """Spaces, '+', '~', '=' and non-ASCII in a name survive signing, storage and download."""
    repo = await on_s3(start_repository, bucket)
    name = "a b+c~d=é.txt"
    put = await repo.request("PUT", "bin/hello/3/" + quote(name), data=b"odd",
                             headers=basic(7, await repo.token()))
    assert put.code == 201, put.body
    assert bucket.keys() == [f"bin/hello/3/{name}"]
    got = await repo.request("GET", "bin/hello/3/" + quote(name))
    assert got.body == b"odd"
    listing = await repo.request("GET", "bin/hello/3/?format=json")
    assert [e["name"] for e in listing.json()["entries"]] == [name]
