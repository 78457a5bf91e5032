"""A real master and worker: deduplication, cache hits, compat downloads, force form and 400s."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.demo import LocalFarm
from buildbot_farm.ondemand.signing import verify_digest
from tests.harness.ports import free_port

HERE = Path(__file__).parent
pytestmark = pytest.mark.master


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFarm]:
    """A master (config: tests/ondemand/master.cfg) and a worker, started for the module."""
    basedir = tmp_path_factory.mktemp("ondemand-farm")
    local = LocalFarm(HERE / "master.cfg", basedir,
                      env={"FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port())})
    local.create()
    local.start()
    try:
        yield local
    finally:
        local.stop()


def call(url: str, body: Any = None, timeout: float = 90) -> tuple[int, bytes, Any]:
    """GET (or POST ``body`` as JSON to) ``url``; the status, body and headers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def api(farm: LocalFarm, path: str) -> str:
    """The URL of the farm API ``path``."""
    return f"{farm.web_url}plugins/farm/api/{path}"


def builds_of(farm: LocalFarm) -> int:
    """How many builds the tool builder has run or is running."""
    return len(farm.api("builders/tool/builds")["builds"])


def test_the_same_request_twice_at_once_builds_once(farm: LocalFarm) -> None:
    """Two simultaneous identical requests get one key and one build; the next is a hit."""
    request = {"scheduler": "tool", "os": "linux", "arch": "arm64", "plugins": ["b@2", "a@1"]}
    before = builds_of(farm)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: call(api(farm, "build"), request), range(2)))
    assert [code for code, _, _ in answers] == [202, 202]
    keys = {json.loads(body)["key"] for _, body, _ in answers}
    assert len(keys) == 1
    key = keys.pop()
    code, body, _ = call(api(farm, "compat?scheduler=tool&os=linux&arch=arm64&plugins=a@1,b@2"))
    assert code == 200, body
    assert body == b"tool for linux/arm64 with ['a@1', 'b@2']\n"
    assert builds_of(farm) == before + 1

    code, body, _ = call(api(farm, "build"),
                         {"scheduler": "tool", "plugins": "a@1, b@2", "arch": "arm64"})
    answer = json.loads(body)
    assert (code, answer["key"], answer["status"]) == (200, key, "succeeded")
    assert builds_of(farm) == before + 1
    code, status, _ = call(api(farm, f"build/{key}"))
    job = json.loads(status)
    assert job["status"] == "succeeded"
    assert [a["result"] for a in job["attempts"]] == ["success"]
    assert job["attempts"][0]["worker"] == "local-worker"
    code, binary, headers = call(answer["download"])
    assert code == 200
    assert binary == b"tool for linux/arm64 with ['a@1', 'b@2']\n"
    assert headers["x-farm-build-key"] == key
    _, signature, _ = call(answer["download"] + ".sig")
    _, public_pem, _ = call(api(farm, "download/public-key.pem"))
    digest = hashlib.sha256(binary).hexdigest()
    assert len(signature) == 64
    assert verify_digest(public_pem, digest, signature)
    assert (farm.master_dir / "ondemand-signing-key.pem.pub").read_bytes() == public_pem


def test_compat_builds_and_streams_the_binary(farm: LocalFarm) -> None:
    """A compat request for a new key starts the build, waits, and returns the file."""
    before = builds_of(farm)
    code, body, headers = call(api(farm, "compat?scheduler=tool&os=darwin&arch=amd64"))
    assert code == 200, body
    assert body == b"tool for darwin/amd64 with []\n"
    assert "attachment" in headers["content-disposition"]
    assert builds_of(farm) == before + 1


# What the web UI's force dialog sends besides the parameters (the hidden codebase's
# source fields empty), as an anonymous user.
FORM = {"username": "", "reason": "force build", "priority": "0",
        "branch": "", "revision": "", "repository": "", "project": ""}


def force(farm: LocalFarm, scheduler: str, params: dict[str, Any]) -> tuple[int, Any]:
    """The JSON-RPC ``force`` of ``scheduler`` the web UI sends; HTTP status and answer."""
    code, body, _ = call(f"{farm.web_url}api/v2/forceschedulers/{scheduler}",
                         {"jsonrpc": "2.0", "id": 1, "method": "force", "params": params})
    return code, json.loads(body)


def request_of(farm: LocalFarm, answer: Any) -> dict[str, Any]:
    """The one build request a force answer names, checked to be of its buildset."""
    bsid, brids = answer["result"]
    (brid,) = brids.values()
    request: dict[str, Any] = farm.api(f"buildrequests/{brid}")["buildrequests"][0]
    assert request["buildsetid"] == bsid
    return request


def job_of(farm: LocalFarm, bsid: int) -> dict[str, Any]:
    """The on-demand job whose build key buildset ``bsid`` carries."""
    properties = farm.api(f"buildsets/{bsid}/properties")["properties"][0]
    _, body, _ = call(api(farm, f"build/{properties['farm_build_key'][0]}"))
    job: dict[str, Any] = json.loads(body)
    return job


def test_the_force_form_gets_a_new_request_then_joins_it(farm: LocalFarm) -> None:
    """A new key answers its new buildset; the same key while it builds answers the same."""
    code, first = force(farm, "slow", FORM)
    assert code == 200, first
    request = request_of(farm, first)
    assert request["builderid"] == farm.api("builders/slow")["builders"][0]["builderid"]
    _, again = force(farm, "slow", FORM)
    assert again["result"] == first["result"]
    assert job_of(farm, first["result"][0])["status"] in ("queued", "running")


def test_the_force_form_leads_to_the_build_that_made_a_built_key(farm: LocalFarm) -> None:
    """Once built, the form's answer is the request of the build that made the artifact."""
    params = {**FORM, "os": "darwin", "arch": "arm64", "plugins": "form@1",
              "reason": "needed for the release"}
    _, first = force(farm, "tool", params)
    bsid = first["result"][0]
    buildset = farm.api(f"buildsets/{bsid}")["buildsets"][0]
    assert buildset["reason"].endswith("forced by anonymous: needed for the release")
    code, _, _ = call(api(farm, "compat?scheduler=tool&os=darwin&arch=arm64&plugins=form@1"))
    assert code == 200
    job = job_of(farm, bsid)
    assert job["status"] == "succeeded"
    build = farm.api(f"builds/{job['attempts'][0]['build_id']}")["builds"][0]
    before = builds_of(farm)
    code, cached = force(farm, "tool", {**FORM, "os": "darwin", "arch": "arm64",
                                        "plugins": "form@1"})
    assert code == 200, cached
    assert cached["result"] == first["result"]
    assert request_of(farm, cached)["buildrequestid"] == build["buildrequestid"]
    assert builds_of(farm) == before


def test_a_built_key_whose_build_buildbot_lost_answers_a_cancelled_request(
    farm: LocalFarm,
) -> None:
    """When Buildbot's database no longer has the build, a request cancelled at once says so."""
    wanted = {"os": "linux", "arch": "arm64", "plugins": "lost@1"}
    code, _, _ = call(api(farm, "compat?scheduler=tool&" + "&".join(
        f"{k}={v}" for k, v in wanted.items())))
    assert code == 200
    _, body, _ = call(api(farm, "build"), {"scheduler": "tool", **wanted})
    key = json.loads(body)["key"]
    # As if the farm database had outlived Buildbot's: the ids name nothing of this key.
    with sqlite3.connect(farm.master_dir / "farm.sqlite", timeout=30) as conn:
        conn.execute("UPDATE farm_ondemand_attempts SET build_id = 999999, buildset_id = 1"
                     " WHERE build_key = ?", (key,))
    before = builds_of(farm)
    code, answer = force(farm, "tool", {**FORM, **wanted})
    assert code == 200, answer
    request = request_of(farm, answer)
    deadline = time.monotonic() + 30
    while not request["complete"] and time.monotonic() < deadline:
        time.sleep(0.2)
        request = request_of(farm, answer)
    assert request["results"] == 6, "CANCELLED"
    reason = farm.api(f"buildsets/{answer['result'][0]}")["buildsets"][0]["reason"]
    assert "is already built" in reason
    assert builds_of(farm) == before


def test_the_force_form_refuses_what_it_does_not_know_by_name(farm: LocalFarm) -> None:
    """A branch, a revision or an unknown name is refused, named, as POST /api/build does."""
    code, answer = force(farm, "tool", {**FORM, "os": "linux", "branch": "main",
                                        "revision": "abc123", "colour": "red"})
    assert code == 400
    assert answer["error"]["code"] == -32602
    problems = answer["error"]["message"]
    assert set(problems) == {"branch", "colour", "revision"}
    assert problems["branch"] == "unknown parameter; this build takes arch, os, plugins"
    code, body, _ = call(api(farm, "build"), {"scheduler": "tool", "branch": "main"})
    assert (code, json.loads(body)["fields"]) == (400, {"branch": problems["branch"]})


def test_bad_parameters_are_named(farm: LocalFarm) -> None:
    """A 400 lists every bad parameter and what is wrong with it."""
    code, body, _ = call(api(farm, "build"),
                         {"scheduler": "tool", "os": "plan9", "arch": "z80", "colour": 1})
    assert code == 400
    assert set(json.loads(body)["fields"]) == {"os", "arch", "colour"}
    code, body, _ = call(api(farm, "compat?scheduler=tool&os=plan9"))
    assert code == 400
    assert set(json.loads(body)["fields"]) == {"os"}


def test_compat_gives_504_with_the_key_after_its_bound(farm: LocalFarm) -> None:
    """A build that outlasts compat_timeout answers 504 with the key; the job carries on."""
    code, body, _ = call(api(farm, "compat?scheduler=slow"))
    answer = json.loads(body)
    assert code == 504
    assert answer["status_url"].endswith(f"/api/build/{answer['key']}")
    _, status, _ = call(answer["status_url"])
    job = json.loads(status)
    assert job["status"] in ("queued", "running")
    assert job["attempt"] == 1, "a pending buildset is no stale job (stale_after is 3 s)"


def test_a_request_must_name_one_of_several_schedulers(farm: LocalFarm) -> None:
    """Without 'scheduler' on a master with two, the 404 lists the ones there are."""
    code, body, _ = call(api(farm, "build"), {})
    assert code == 404
    assert "one of flaky, slow, tool" in json.loads(body)["error"]


def test_the_janitor_retries_a_build_that_ended_exception(farm: LocalFarm) -> None:
    """Attempt 1 ends EXCEPTION, the janitor requeues it, and attempt 2 delivers the file.

    Buildbot quarantines a worker for 10 s after an EXCEPTION, longer than the compat bound
    of this master, so the test follows the job's status instead.
    """
    _, body, _ = call(api(farm, "build"), {"scheduler": "flaky"})
    key = json.loads(body)["key"]
    deadline = time.monotonic() + 60
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = json.loads(call(api(farm, f"build/{key}"))[1])
        if job["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.5)
    assert job["status"] == "succeeded", job
    assert [a["result"] for a in job["attempts"]] == ["exception", "success"]
    assert call(job["artifact"]["download"])[1] == b"second time lucky\n"


def test_a_removed_artifact_is_rebuilt(farm: LocalFarm) -> None:
    """When retention removed a cached artifact, the next request builds it again."""
    request = {"scheduler": "tool", "os": "darwin", "arch": "arm64"}
    code, body, _ = call(api(farm, "compat?scheduler=tool&os=darwin&arch=arm64"))
    assert code == 200, body
    key = json.loads(call(api(farm, "build"), request)[1])["key"]
    job = json.loads(call(api(farm, f"build/{key}"))[1])
    (farm.master_dir / "artifacts" / job["artifact"]["path"]).unlink()
    assert call(job["artifact"]["download"])[0] == 410
    before = builds_of(farm)
    code, body, _ = call(api(farm, "build"), request)
    assert (code, json.loads(body)["status"]) == (202, "queued")
    code, body, _ = call(api(farm, "compat?scheduler=tool&os=darwin&arch=arm64"))
    assert code == 200, body
    assert builds_of(farm) == before + 1
    attempts = json.loads(call(api(farm, f"build/{key}"))[1])["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2]
