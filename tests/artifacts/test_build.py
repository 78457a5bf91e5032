"""A real master and worker: tokens minted by a step or by the master, curl uploads,
ArtifactUpload and ArtifactDownload (files and directories)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.demo import LocalFarm, LocalFarmError
from tests.containers.conftest import BuildFarm
from tests.harness.ports import free_port

HERE = Path(__file__).parent
pytestmark = pytest.mark.master
SUCCESS = 0
FAILURE = 2


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


def upload_after(build_farm: BuildFarm, builder: str, build: dict[str, Any], token: str) -> str:
    """The HTTP status of an upload with ``build``'s token into its own directory."""
    base = build_farm.farm.web_url + "plugins/farm/artifacts/"
    late = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u",
         f"build-{build['buildid']}:{token}", "-T", "/etc/hostname",
         f"{base}bin/{builder}/{build['number']}/late.txt"],
        capture_output=True, text=True, check=True,
    )
    return late.stdout


def every_log(build_farm: BuildFarm, build: dict[str, Any]) -> str:
    """The text of every log of every step of ``build``."""
    texts = []
    for step in build_farm.farm.api(f"builds/{build['buildid']}/steps")["steps"]:
        for entry in build_farm.farm.api(f"steps/{step['stepid']}/logs")["logs"]:
            chunks = build_farm.farm.api(f"logs/{entry['logid']}/contents")["logchunks"]
            texts.append("".join(chunk["content"] for chunk in chunks))
    return "\n".join(texts)


def kept_token(build_farm: BuildFarm, builder: str) -> str:
    """The token the build's "keep token" step wrote next to its build directory."""
    token = (build_farm.builddir / builder / "token.txt").read_text()
    assert len(token) > 30
    return token


def test_the_master_mints_the_token_of_an_opted_in_builder(build_farm: BuildFarm) -> None:
    """Without an ArtifactToken step, the first step uploads; no log shows the token; it dies."""
    build = build_farm.build("minted")
    assert build["results"] == SUCCESS, every_log(build_farm, build)
    number = build["number"]
    base = build_farm.farm.web_url + "plugins/farm/artifacts/"
    assert fetch(f"{base}bin/minted/{number}/by-properties.txt") == b"by properties\n"
    assert fetch(f"{base}bin/minted/{number}/by-curl.txt") == b"made by curl\n"
    properties = build_farm.properties(build)
    assert properties["FARM_ARTIFACT_URL"] == f"{base}bin/minted/{number}"
    assert properties["FARM_ARTIFACT_USER"] == f"build-{build['buildid']}"

    token = kept_token(build_farm, "minted")
    logs = every_log(build_farm, build)
    assert "FARM_ARTIFACT_TOKEN=<FARM_ARTIFACT_TOKEN>" in logs
    assert token not in logs
    assert token not in json.dumps(properties)
    assert token not in build_farm.farm.master_log.read_text()
    assert upload_after(build_farm, "minted", build, token) == "401"


def test_a_failed_build_loses_its_minted_token_too(build_farm: BuildFarm) -> None:
    """A build that fails after uploading still has its token revoked when it finishes."""
    build = build_farm.build("minted-fails")
    assert build["results"] == FAILURE
    assert build_farm.step(build, "curl upload")["results"] == SUCCESS
    token = kept_token(build_farm, "minted-fails")
    assert token not in every_log(build_farm, build)
    assert upload_after(build_farm, "minted-fails", build, token) == "401"


def test_a_builder_not_opted_in_gets_no_token(build_farm: BuildFarm) -> None:
    """A builder token_builders does not name sees neither the variables nor the properties."""
    build = build_farm.build("plain")
    assert build["results"] == SUCCESS, every_log(build_farm, build)
    properties = build_farm.properties(build)
    assert "FARM_ARTIFACT_URL" not in properties
    assert "FARM_ARTIFACT_USER" not in properties


def test_artifact_download_fetches_a_directory(build_farm: BuildFarm) -> None:
    """Every file under a repository directory lands on the worker at its relative path."""
    art = build_farm.build("art")
    assert art["results"] == SUCCESS, every_log(build_farm, art)
    src = f"appimage/art/{art['number']}/tree"
    build = build_farm.farm.force_build("fetch", {"src": src})
    assert build["results"] == SUCCESS, every_log(build_farm, build)
    fetched = build_farm.builddir / "fetch" / "build" / "fetched"
    found = sorted(str(p.relative_to(fetched)) for p in fetched.rglob("*") if p.is_file())
    assert found == ["docs/README", "hello.py"]
    assert (fetched / "hello.py").read_text() == "print('hi')\n"
    assert (fetched / "docs" / "README").read_text() == "readme\n"
    digests = {e["path"]: e["sha256"] for e in build_farm.properties(art)["farm_artifacts"]}
    shown = build_farm.log(build_farm.step(build, "fetch"))
    assert f"{digests[src + '/docs/README']}  fetched/docs/README" in shown


def test_artifact_download_of_nothing_fails_naming_it(build_farm: BuildFarm) -> None:
    """A src with nothing stored fails the step, and its log names the path."""
    build = build_farm.farm.force_build("fetch", {"src": "bin/nobody/9/gone.txt"})
    assert build["results"] == FAILURE
    step = build_farm.step(build, "fetch")
    assert step["results"] == FAILURE
    assert "no artifact at /bin/nobody/9/gone.txt" in build_farm.log(step)


def test_artifact_download_refuses_a_file_that_differs_from_the_index(
    build_farm: BuildFarm,
) -> None:
    """A stored file changed behind the index's back fails the step, naming it, and is removed."""
    art = build_farm.build("art")
    assert art["results"] == SUCCESS, every_log(build_farm, art)
    stored = build_farm.farm.master_dir / "artifacts" / f"appimage/art/{art['number']}/tree"
    (stored / "hello.py").write_text("print('ho')\n")
    build = build_farm.farm.force_build("fetch", {"src": f"appimage/art/{art['number']}/tree"})
    assert build["results"] == FAILURE
    shown = build_farm.log(build_farm.step(build, "fetch"))
    assert "fetched/hello.py: the repository's copy has sha256" in shown
    assert not (build_farm.builddir / "fetch" / "build" / "fetched" / "hello.py").exists()


def farm_with_edited_config(tmp_path: Path, old: str, new: str) -> LocalFarm:
    """A created (not started) farm whose master.cfg is tests/artifacts/master.cfg, edited."""
    text = (HERE / "master.cfg").read_text()
    edited = text.replace(old, new)
    assert edited != text
    config = tmp_path / "master.cfg"
    config.write_text(edited)
    farm = LocalFarm(config, tmp_path / "farm",
                     env={"FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port())})
    farm.create()
    return farm


def test_a_master_refuses_token_builders_naming_no_builder(tmp_path: Path) -> None:
    """A token_builders entry that matches no builder stops the master, naming the entry."""
    farm = farm_with_edited_config(tmp_path, '"minted", "minted-*"', '"minted", "mintd"')
    try:
        with pytest.raises(LocalFarmError):
            farm.start()
    finally:
        farm.stop()
    assert "no builder matches the token_builders entries 'mintd' (did you mean 'minted'?);" in (
        farm.master_log.read_text()
    )


def test_an_opted_in_build_without_a_repository_fails_before_its_steps(tmp_path: Path) -> None:
    """When no token can be minted, a failing "artifact-token" step says why, and nothing runs.

    checkconfig refuses a master.cfg whose artifact steps have no repository; one that binds
    BuildmasterConfig only at its end escapes those checks, and reaches this at build time.
    """
    farm = farm_with_edited_config(tmp_path, 'name="farm"', 'name="not-the-farm"')
    created = farm.master_dir / "master.cfg"
    text = created.read_text()
    unchecked = text.replace("c = BuildmasterConfig = {}", "c = {}") + "BuildmasterConfig = c\n"
    assert "c = {}" in unchecked
    created.write_text(unchecked)
    farm.start()
    try:
        build = farm.force_build("minted")
        build_farm = BuildFarm(farm, "")
        assert build["results"] == FAILURE
        steps = [s["name"] for s in farm.api(f"builds/{build['buildid']}/steps")["steps"]]
        assert steps == ["worker_preparation", "artifact-token"]
        shown = build_farm.log(build_farm.step(build, "artifact-token"), "error")
        assert "builder 'minted' is in token_builders, but no artifact repository" in shown
    finally:
        farm.stop()
