"""A real master and worker with the repository on S3 (moto), its keys from Buildbot secrets:
builds upload into the bucket, and ArtifactDownload brings files and directories back."""

from __future__ import annotations

import contextlib
import hashlib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from buildbot_farm.demo import LocalFarm
from tests.artifacts.test_build import every_log
from tests.containers.conftest import BuildFarm
from tests.harness.ports import free_port
from tests.harness.s3_server import REGION, S3Server

HERE = Path(__file__).parent
pytestmark = pytest.mark.master
SUCCESS = 0
FAILURE = 2
BUCKET = "farm-build"


@dataclass
class S3Farm:
    """A running master and worker on S3, and a boto3 client of the same bucket."""

    build_farm: BuildFarm
    boto: Any

    def fetched(self) -> Path:
        """Where the fetch builder's ArtifactDownload puts its files on the worker."""
        return self.build_farm.builddir / "fetch" / "build" / "fetched"

    def staging_leftovers(self) -> list[Path]:
        """What is left in the master's local spool (where S3 downloads are staged)."""
        spool = self.build_farm.farm.master_dir / "artifacts" / ".farm-tmp"
        assert spool.is_dir()
        return sorted(spool.rglob("*"))


@pytest.fixture(scope="module")
def s3_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Farm]:
    """A moto server with the bucket, and a master (tests/artifacts/s3-master.cfg) on it."""
    with running_farm(tmp_path_factory.mktemp("s3-build"), HERE / "s3-master.cfg") as farm:
        yield farm


def test_a_build_uploads_into_the_bucket(s3_farm: S3Farm) -> None:
    """curl and ArtifactUpload in a real build land in the bucket; the master serves them."""
    farm = s3_farm.build_farm
    build = farm.build("art")
    failed = [s["name"] for s in farm.farm.api(f"builds/{build['buildid']}/steps")["steps"]
              if s["results"] != SUCCESS]
    assert build["results"] == SUCCESS, failed
    number = build["number"]
    pages = s3_farm.boto.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    keys = sorted(o["Key"] for page in pages for o in page.get("Contents", [])
                  if f"/art/{number}/" in o["Key"])
    assert keys == [
        f"farm/appimage/art/{number}/tree/docs/README",
        f"farm/appimage/art/{number}/tree/hello.py",
        f"farm/bin/art/{number}/by-curl.txt",
        f"farm/bin/art/{number}/hello.py",
    ]
    base = farm.farm.web_url + "plugins/farm/artifacts/"
    with urllib.request.urlopen(f"{base}bin/art/{number}/hello.py", timeout=30) as got:
        assert got.read() == b"print('hi')\n"


def test_artifact_download_fetches_a_file_and_a_directory_from_s3(s3_farm: S3Farm) -> None:
    """A later build gets a file and, recursively, a directory an earlier build put in S3,
    byte for byte and sha256-checked, and leaves no staged copy on the master."""
    farm = s3_farm.build_farm
    art = farm.build("art")
    assert art["results"] == SUCCESS, every_log(farm, art)
    number = art["number"]
    digests = {e["path"]: e["sha256"] for e in farm.properties(art)["farm_artifacts"]}

    build = farm.farm.force_build("fetch", {"src": f"bin/art/{number}/hello.py"})
    assert build["results"] == SUCCESS, every_log(farm, build)
    assert s3_farm.fetched().read_bytes() == b"print('hi')\n"
    shown = farm.log(farm.step(build, "fetch"))
    assert f"{digests[f'bin/art/{number}/hello.py']}  fetched" in shown

    src = f"appimage/art/{number}/tree"
    build = farm.farm.force_build("fetch", {"src": src})
    assert build["results"] == SUCCESS, every_log(farm, build)
    fetched = s3_farm.fetched()
    found = sorted(str(p.relative_to(fetched)) for p in fetched.rglob("*") if p.is_file())
    assert found == ["docs/README", "hello.py"]
    assert (fetched / "hello.py").read_bytes() == b"print('hi')\n"
    assert (fetched / "docs" / "README").read_bytes() == b"readme\n"
    shown = farm.log(farm.step(build, "fetch"))
    assert f"{digests[src + '/docs/README']}  fetched/docs/README" in shown
    assert s3_farm.staging_leftovers() == []


def test_artifact_download_from_s3_of_nothing_fails_naming_it(s3_farm: S3Farm) -> None:
    """A src with nothing in the bucket fails the step, and its log names the path."""
    farm = s3_farm.build_farm
    build = farm.farm.force_build("fetch", {"src": "bin/nobody/9/gone.txt"})
    assert build["results"] == FAILURE
    step = farm.step(build, "fetch")
    assert step["results"] == FAILURE
    assert "no artifact at /bin/nobody/9/gone.txt" in farm.log(step)


def test_artifact_download_refuses_an_object_that_differs_from_the_index(
    s3_farm: S3Farm,
) -> None:
    """An object replaced in the bucket behind the index's back fails the step, naming the
    file, which is removed from the worker; the staged copy is gone too."""
    farm = s3_farm.build_farm
    art = farm.build("art")
    assert art["results"] == SUCCESS, every_log(farm, art)
    src = f"appimage/art/{art['number']}/tree"
    s3_farm.boto.put_object(Bucket=BUCKET, Key=f"farm/{src}/hello.py", Body=b"print('ho')\n")
    build = farm.farm.force_build("fetch", {"src": src})
    assert build["results"] == FAILURE
    shown = farm.log(farm.step(build, "fetch"))
    changed = hashlib.sha256(b"print('ho')\n").hexdigest()
    assert f"fetched/hello.py: the repository's copy has sha256 {changed}" in shown
    assert not (s3_farm.fetched() / "hello.py").exists()
    assert s3_farm.staging_leftovers() == []


@contextlib.contextmanager
def running_farm(tmp_path: Path, config: Path) -> Iterator[S3Farm]:
    """A moto server with the bucket, and a master (``config``, which reads FARM_S3_*) and
    worker on it, the keys as secret files; with a boto3 client of the bucket."""
    server = S3Server(tmp_path / "moto.log").start()
    try:
        boto = boto3.client("s3", endpoint_url=server.endpoint, region_name=REGION,
                            aws_access_key_id=server.access_key,
                            aws_secret_access_key=server.secret_key)
        boto.create_bucket(Bucket=BUCKET)
        secrets = tmp_path / "secrets"
        secrets.mkdir(mode=0o700)
        for name, value in (("s3-access-key", server.access_key),
                            ("s3-secret-key", server.secret_key)):
            (secrets / name).write_text(value + "\n")
            (secrets / name).chmod(0o600)
        farm = LocalFarm(config, tmp_path / "farm", env={
            "FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port()),
            "FARM_S3_ENDPOINT": server.endpoint, "FARM_S3_BUCKET": BUCKET,
            "FARM_S3_SECRETS": str(secrets),
        })
        farm.create()
        farm.start()
        try:
            yield S3Farm(BuildFarm(farm, ""), boto)
        finally:
            farm.stop()
    finally:
        server.stop()
