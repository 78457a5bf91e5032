"""BuildRecorder in a real master and worker, and the records API over real HTTP."""

from __future__ import annotations

import hashlib
import json
import platform
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.demo import LocalFarm
from buildbot_farm.records.verify_cli import verify_file
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port
from tests.records.test_reference import validate_in_toto

pytestmark = pytest.mark.master
API_KEY = "records-test-api-key-0123"
ADMIN_KEY = "records-test-admin-key-0123"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PAYLOAD = "print('hello from a recorded build')\n"
DIGEST = hashlib.sha256(PAYLOAD.encode()).hexdigest()

MASTER_CFG = f"""
import os
from buildbot.plugins import reporters, schedulers, steps, util, worker

{LOOPBACK_MASTER}
c["services"] = [
    util.FarmService(
        artifacts=util.ArtifactRepository(directory="artifacts"),
        records=util.BuildRecords(
            api_keys={{"ci": "{API_KEY}"}}, admin_keys={{"ops": "{ADMIN_KEY}"}},
            port=f"tcp:{{os.environ['FARM_RECORDS_PORT']}}:interface=127.0.0.1")),
    reporters.BuildRecorder(
        builders=["recorded"], name="hello", version=util.Interpolate("1.0.%(prop:buildnumber)s"),
        language="python", properties=["buildername"]),
]
c["workers"] = [worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"])]
factory = util.BuildFactory([
    steps.StringDownload({PAYLOAD!r}, workerdest="dist/hello.py", name="build"),
    steps.ArtifactUpload(workersrc="dist/hello.py", name="publish"),
])
c["builders"] = [util.BuilderConfig(name="recorded", workernames=["local-worker"],
                                    factory=factory)]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["recorded"])]
"""


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The module's running master of MASTER_CFG on free ports, its records API also on a port of
    its own, stopped afterwards."""
    base = tmp_path_factory.mktemp("records")
    config = base / "master.cfg"
    config.write_text(
        MASTER_CFG.replace("@API@", API_KEY).replace("@ADMIN@", ADMIN_KEY)
        .replace("@DIGEST@", DIGEST)
    )
    local = LocalFarm(
        config, base / "farm",
        env={
            "FARM_WEB_PORT": str(free_port()),
            "FARM_PB_PORT": str(free_port()),
            "FARM_RECORDS_PORT": str(free_port()),
        },
        build_timeout=120,
    )
    local.create()
    local.start()
    yield local
    local.stop()


def call(
    farm: LocalFarm, method: str, path: str, body: Any = None, key: str | None = None
) -> tuple[int, dict[str, str], Any]:
    """One request to the records API; return (status, headers, decoded JSON or None)."""
    request = urllib.request.Request(
        f"{farm.web_url}plugins/farm/api/{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw, status, headers = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as e:
        raw, status, headers = e.read(), e.code, dict(e.headers)
    return status, headers, json.loads(raw) if raw else None


def wait_for_record(farm: LocalFarm, path: str) -> dict[str, Any]:
    """Poll the records API at ``path`` every 0.3 s until it answers 200; the record, or fail after
    30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, _, body = call(farm, "GET", path)
        if status == 200:
            return dict(body)
        time.sleep(0.3)
    raise AssertionError(f"no record at {path} after 30 s; see {farm.master_log}")


def test_a_finished_build_is_recorded_with_its_commit_and_binaries(
    farm: LocalFarm, tmp_path: Path
) -> None:
    """A forced git build gets one record: commit URL, artifact digest, worker, build URL."""
    build = farm.force_build(
        "recorded",
        {"repository": "git@github.com:example/hello.git", "revision": COMMIT, "branch": "main"},
    )
    record = wait_for_record(farm, f"builds/hello/1.0.{build['number']}")
    assert record["sourceUrl"] == f"https://github.com/example/hello/commit/{COMMIT}"
    assert record["SourceUrl"] == record["sourceUrl"]
    assert record["source"]["commit"] == COMMIT
    [binary] = record["binaries"]
    assert binary["sha256"] == DIGEST
    assert binary["size"] == len(PAYLOAD)
    assert binary["path"].endswith("/hello.py")
    with urllib.request.urlopen(binary["url"], timeout=30) as response:
        assert response.read() == PAYLOAD.encode(), "the recorded URL does not serve the binary"
    assert record["BinaryUrl"] == binary["url"]
    own_port = farm.extra_env["FARM_RECORDS_PORT"]
    path = f"builds/hello/1.0.{build['number']}"
    with urllib.request.urlopen(f"http://127.0.0.1:{own_port}/{path}", timeout=30) as response:
        assert json.loads(response.read()) == record, "the API on its own port differs"
    assert record["result"] == "success"
    assert record["language"] == "python"
    assert record["builtOn"]
    assert record["environment"]["worker"] == "local-worker"
    assert record["environment"]["buildername"] == "recorded"
    assert record["environment"]["arch"] == platform.machine()
    assert record["environment"]["python"] == platform.python_version()
    assert record["buildUrl"].endswith(f"/builds/{build['number']}")

    status, headers, envelope = call(farm, "GET", f"builds/hello/1.0.{build['number']}/provenance")
    assert status == 200
    assert "immutable" in headers["Cache-Control"]
    statement = validate_in_toto(envelope)
    assert statement["subject"][0]["digest"] == {"sha256": DIGEST}
    envelope_file = tmp_path / "provenance.json"
    envelope_file.write_text(json.dumps(envelope))
    public_key = farm.master_dir / "records-signing-key.pem.pub"
    assert verify_file(envelope_file, public_key) == 0
    envelope["payload"] = envelope["payload"][:-8] + "AAAAAAA="
    envelope_file.write_text(json.dumps(envelope))
    assert verify_file(envelope_file, public_key) == 1


def test_post_get_delete_over_http(farm: LocalFarm) -> None:
    """A posted record is served with a strong ETag, refused twice, and tombstoned to 410."""
    record = {"Name": "outside", "Version": "2.0", "TimeStamp": "2024-05-01T12:00:00Z",
              "Hostname": "ci-7", "Architecture": "amd64", "Language": "go",
              "SourceUrl": "https://gitlab.example/g/outside/-/commit/" + COMMIT}
    assert call(farm, "POST", "builds", record)[0] == 401
    assert call(farm, "POST", "builds", record, key="not-a-configured-key")[0] == 401
    status, headers, created = call(farm, "POST", "builds", record, key=API_KEY)
    assert status == 201, created
    assert created["builtOn"] == "ci-7"
    assert created["environment"]["arch"] == "amd64"
    assert created["timestamp"] == 1714564800.0
    assert call(farm, "POST", "builds", record, key=API_KEY)[0] == 409

    status, headers, fetched = call(farm, "GET", "builds/outside/2.0")
    assert status == 200
    assert fetched == created
    assert headers["ETag"].startswith('"')
    assert "max-age=31536000" in headers["Cache-Control"]

    assert call(farm, "DELETE", "builds/outside/2.0?reason=x", key=API_KEY)[0] == 403
    assert call(farm, "DELETE", "builds/outside/2.0", key=ADMIN_KEY)[0] == 400
    status, _, tombstone = call(farm, "DELETE", "builds/outside/2.0?reason=leaked", key=ADMIN_KEY)
    assert status == 200
    assert tombstone["deletedBy"] == "ops"
    status, _, gone = call(farm, "GET", "builds/outside/2.0")
    assert status == 410
    assert gone["deleted"]["reason"] == "leaked"
    assert call(farm, "GET", "builds?name=outside")[2] == []
    listed = call(farm, "GET", "builds?name=outside&deleted=true")[2]
    assert [r["deleted"]["deletedBy"] for r in listed] == ["ops"]


def test_bad_posts_are_answered_with_every_bad_field(farm: LocalFarm) -> None:
    """A record with several bad fields gets one 400 naming each of them."""
    status, _, answer = call(
        farm, "POST", "builds",
        {"name": "", "timestamp": "yesterday", "binaries": [{"url": "ftp://x", "size": -1}],
         "colour": "red"},
        key=API_KEY,
    )
    assert status == 400
    assert set(answer["fields"]) == {
        "name", "version", "timestamp", "binaries[0].url", "binaries[0].size", "colour",
    }
