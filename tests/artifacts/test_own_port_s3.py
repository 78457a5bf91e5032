"""The own port with S3 storage: the body streams into the local spool directory, refusals
come before it, and the accepted file ends up in the bucket (moto's real S3 server)."""

from __future__ import annotations

import hashlib
import os

import pytest_twisted

from tests.artifacts import test_s3, test_streaming
from tests.artifacts.conftest import basic
from tests.artifacts.test_s3 import Bucket
from tests.artifacts.test_streaming import MIB, StartOwnPort, connect, leftovers, put_head

# The fixtures of the S3 and streaming tests, shared here.
s3_server = test_s3.s3_server
bucket = test_s3.bucket
own_port = test_streaming.own_port


@pytest_twisted.ensureDeferred
async def test_streamed_upload_lands_in_the_bucket(own_port: StartOwnPort, bucket: Bucket) -> None:
    """A PUT on the own port is spooled locally, put in the bucket and served back."""
    repo = await own_port(storage=bucket.config)
    payload = os.urandom(3 * MIB)
    put = await repo.request("PUT", "bin/hello/3/s3.bin", data=payload,
                             headers=basic(7, await repo.token()))
    assert put.code == 201, put.body
    assert put.json()["sha256"] == hashlib.sha256(payload).hexdigest()
    assert bucket.read("bin/hello/3/s3.bin") == payload
    got = await repo.request("GET", "bin/hello/3/s3.bin")
    assert got.body == payload
    assert leftovers(repo) == []


@pytest_twisted.ensureDeferred
async def test_bad_token_is_refused_before_the_body_on_s3(
    own_port: StartOwnPort, bucket: Bucket,
) -> None:
    """With S3 storage too, a wrong token gets 401 after the headers; the bucket stays empty."""
    repo = await own_port(storage=bucket.config)
    client = await connect(repo)
    client.transport.write(put_head("bin/hello/3/x.bin", basic(7, "wrong"), length=1024 * MIB))
    assert (await client.answer()).startswith(b"HTTP/1.1 401 ")
    await client.closed
    assert bucket.keys() == []
    assert leftovers(repo) == []
