"""A real master and worker with the repository on S3 (moto), its keys from Buildbot secrets."""

from __future__ import annotations

import contextlib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from buildbot_farm.demo import LocalFarm
from tests.containers.conftest import BuildFarm
from tests.harness.ports import free_port
from tests.harness.s3_server import REGION, S3Server

HERE = Path(__file__).parent
pytestmark = pytest.mark.master
SUCCESS = 0
BUCKET = "farm-build"


def test_a_build_uploads_into_the_bucket(tmp_path: Path) -> None:
    """curl and ArtifactUpload in a real build land in the bucket; the master serves them."""
    server = S3Server(tmp_path / "moto.log").start()
    try:
        boto = boto3.client("s3", endpoint_url=server.endpoint, region_name=REGION,
                            aws_access_key_id=server.access_key,
                            aws_secret_access_key=server.secret_key)
        boto.create_bucket(Bucket=BUCKET)
        with running_farm(tmp_path, server) as farm:
            build = farm.build("art")
            failed = [s["name"] for s in farm.farm.api(f"builds/{build['buildid']}/steps")["steps"]
                      if s["results"] != SUCCESS]
            assert build["results"] == SUCCESS, failed
            number = build["number"]
            pages = boto.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            keys = sorted(o["Key"] for page in pages for o in page.get("Contents", []))
            assert keys == [
                f"farm/appimage/art/{number}/tree/docs/README",
                f"farm/appimage/art/{number}/tree/hello.py",
                f"farm/bin/art/{number}/by-curl.txt",
                f"farm/bin/art/{number}/hello.py",
            ]
            base = farm.farm.web_url + "plugins/farm/artifacts/"
            with urllib.request.urlopen(f"{base}bin/art/{number}/hello.py", timeout=30) as got:
                assert got.read() == b"print('hi')\n"
    finally:
        server.stop()


@contextlib.contextmanager
def running_farm(tmp_path: Path, server: S3Server) -> Iterator[BuildFarm]:
    """A master (tests/artifacts/s3-master.cfg) and worker, with the keys as secret files."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    for name, value in (("s3-access-key", server.access_key),
                        ("s3-secret-key", server.secret_key)):
        (secrets / name).write_text(value + "\n")
        (secrets / name).chmod(0o600)
    farm = LocalFarm(HERE / "s3-master.cfg", tmp_path / "farm", env={
        "FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port()),
        "FARM_S3_ENDPOINT": server.endpoint, "FARM_S3_BUCKET": BUCKET,
        "FARM_S3_SECRETS": str(secrets),
    })
    farm.create()
    farm.start()
    try:
        yield BuildFarm(farm, "")
    finally:
        farm.stop()
