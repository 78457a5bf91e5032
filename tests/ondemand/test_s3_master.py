"""A real master and worker whose artifact repository is on S3 (moto): on-demand downloads
and compat requests are served from the bucket."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.demo import LocalFarm
from buildbot_farm.ondemand.signing import verify_digest
from tests.artifacts.test_s3_build import BUCKET, S3Farm, running_farm
from tests.ondemand.test_master import api, call

HERE = Path(__file__).parent
pytestmark = pytest.mark.master


@pytest.fixture(scope="module")
def s3_ondemand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Farm]:
    """A moto server with the bucket, and a master (tests/ondemand/s3-master.cfg) on it."""
    with running_farm(tmp_path_factory.mktemp("s3-ondemand"), HERE / "s3-master.cfg") as farm:
        yield farm


def finished_job(farm: LocalFarm, key: str, within: float = 90) -> dict[str, Any]:
    """The job ``key`` once it succeeded or failed."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        job: dict[str, Any] = json.loads(call(api(farm, f"build/{key}"))[1])
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {key} did not finish within {within} s")


def test_a_built_artifact_downloads_from_s3(s3_ondemand: S3Farm, tmp_path: Path) -> None:
    """After a requested build, /api/download/{key} sends the object's bytes from the bucket
    with Content-Length, the sha256 ETag and a file name curl -OJ/-o use; .sig verifies it."""
    farm = s3_ondemand.build_farm.farm
    code, body, _ = call(api(farm, "build"), {"os": "linux"})
    assert code == 202, body
    key = json.loads(body)["key"]
    job = finished_job(farm, key)
    assert job["status"] == "succeeded", job
    wanted = b"tool for linux\n"
    digest = hashlib.sha256(wanted).hexdigest()
    stored = s3_ondemand.boto.get_object(Bucket=BUCKET, Key="farm/" + job["artifact"]["path"])
    assert stored["Body"].read() == wanted

    code, binary, headers = call(api(farm, f"download/{key}"))
    assert (code, binary) == (200, wanted)
    assert headers["content-length"] == str(len(wanted))
    assert headers["etag"] == f'"{digest}"'
    assert headers["x-checksum-sha256"] == digest
    assert headers["x-farm-build-key"] == key
    assert headers["content-disposition"] == 'attachment; filename="tool"'
    unchanged = urllib.request.Request(api(farm, f"download/{key}"),
                                       headers={"if-none-match": f'"{digest}"'})
    with pytest.raises(urllib.error.HTTPError) as not_modified:
        urllib.request.urlopen(unchanged, timeout=30)
    assert not_modified.value.code == 304

    target = tmp_path / "tool"
    subprocess.run(["curl", "-fsS", "-o", str(target), api(farm, f"download/{key}")],
                   check=True, timeout=60)
    assert target.read_bytes() == wanted

    ranged = urllib.request.Request(api(farm, f"download/{key}"), headers={"range": "bytes=5-7"})
    with urllib.request.urlopen(ranged, timeout=30) as got:
        assert (got.status, got.read()) == (206, b"for")

    _, signature, _ = call(api(farm, f"download/{key}.sig"))
    _, public_pem, _ = call(api(farm, "download/public-key.pem"))
    assert verify_digest(public_pem, digest, signature)


def test_compat_streams_the_artifact_from_s3(s3_ondemand: S3Farm) -> None:
    """A compat request builds a new key, waits, then streams the file out of the bucket."""
    code, body, headers = call(api(s3_ondemand.build_farm.farm, "compat?os=darwin"))
    assert code == 200, body
    assert body == b"tool for darwin\n"
    assert headers["content-length"] == str(len(body))
    assert "attachment" in headers["content-disposition"]


def test_an_artifact_gone_from_the_bucket_answers_410(s3_ondemand: S3Farm) -> None:
    """When the object left the bucket (retention), the download says so with 410."""
    farm = s3_ondemand.build_farm.farm
    code, body, _ = call(api(farm, "compat?os=linux"))
    assert code == 200, body
    key = json.loads(call(api(farm, "build"), {"os": "linux"})[1])["key"]
    job = json.loads(call(api(farm, f"build/{key}"))[1])
    s3_ondemand.boto.delete_object(Bucket=BUCKET, Key="farm/" + job["artifact"]["path"])
    code, body, _ = call(api(farm, f"download/{key}"))
    assert code == 410, body
    assert "submit the request again" in json.loads(body)["error"]
