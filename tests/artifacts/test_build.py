"""A real master and worker: a build mints a token, uploads with curl and ArtifactUpload."""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildbot_farm.demo import LocalFarm
from tests.containers.conftest import BuildFarm
from tests.harness.ports import free_port

HERE = Path(__file__).parent
pytestmark = pytest.mark.master
SUCCESS = 0


@pytest.fixture(scope="module")
def build_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuildFarm]:
    """A master (config: tests/artifacts/master.cfg) and a worker, started for the module."""
    basedir = tmp_path_factory.mktemp("artifact-farm")
    farm = LocalFarm(HERE / "master.cfg", basedir,
                     env={"FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port())})
    farm.create()
    farm.start()
    try:
        yield BuildFarm(farm, "")
    finally:
        farm.stop()


def fetch(url: str) -> bytes:
    """GET ``url`` and return the body."""
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
    return body


def test_a_build_uploads_with_curl_and_artifact_upload(build_farm: BuildFarm) -> None:
    """The token works for curl in the build, the steps record digests, and it dies after."""
    build = build_farm.build("art")
    steps = build_farm.farm.api(f"builds/{build['buildid']}/steps")["steps"]
    failed = [s["name"] for s in steps if s["results"] != SUCCESS]
    assert build["results"] == SUCCESS, [(n, build_farm.log(build_farm.step(build, n)))
                                         for n in failed]
    number = build["number"]
    base = build_farm.farm.web_url + "plugins/farm/artifacts/"
    assert fetch(f"{base}bin/art/{number}/by-curl.txt") == b"made by curl\n"

    shown = build_farm.log(build_farm.step(build, "show token"))
    token = (build_farm.builddir / "art" / "token.txt").read_text()
    assert len(token) > 30
    assert token not in shown
    assert "token=<FARM_ARTIFACT_TOKEN>" in shown

    recorded = build_farm.properties(build)["farm_artifacts"]
    by_path = {entry["path"]: entry for entry in recorded}
    assert set(by_path) == {
        f"bin/art/{number}/hello.py",
        f"appimage/art/{number}/tree/hello.py",
        f"appimage/art/{number}/tree/docs/README",
    }
    for entry in recorded:
        assert set(entry) == {"path", "url", "size", "sha256"}
        body = fetch(entry["url"])
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
        assert len(body) == entry["size"]
    urls = {u["url"] for u in build_farm.step(build, "upload dir")["urls"]}
    assert by_path[f"appimage/art/{number}/tree/docs/README"]["url"] in urls

    listing = json.loads(fetch(f"{base}bin/art/{number}/?format=json"))
    assert {e["name"] for e in listing["entries"]} == {"by-curl.txt", "hello.py"}

    late = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u",
         f"build-{build['buildid']}:{token}", "-T", "/etc/hostname",
         f"{base}bin/art/{number}/late.txt"],
        capture_output=True, text=True, check=True,
    )
    assert late.stdout == "401"
