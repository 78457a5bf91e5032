"""Two real masters, each with its own worker, on one PostgreSQL and no shared message queue.

Each master hears only its own builds' events, so these tests pin down that on-demand jobs
still complete, dedupe and retry correctly when the build runs on the other master.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.demo import LocalFarm
from tests.db.conftest import schema_dsn
from tests.harness.ports import free_port
from tests.ondemand.test_master import api, call

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
# Master a's janitor effectively never runs after its first sweep; b's runs every second.
JANITOR_INTERVALS = {"a": "3600", "b": "1"}
EXCEPTION = 4
SUCCESS = 0
pytestmark = [pytest.mark.master, pytest.mark.postgres]


@pytest.fixture(scope="module")
def masters(tmp_path_factory: pytest.TempPathFactory, pg_dsn: str) -> Iterator[list[LocalFarm]]:
    """Masters a and b (config: two_masters.cfg), each with a worker, on one PostgreSQL."""
    basedir = tmp_path_factory.mktemp("two-masters")
    suffix = basedir.name.replace("-", "_")
    shared = {
        "FARM_BUILDBOT_DB": schema_dsn(pg_dsn, f"bb_{suffix}").replace(
            "postgresql://", "postgresql+psycopg2://", 1),
        "FARM_DB_URL": schema_dsn(pg_dsn, f"farm_{suffix}"),
        "FARM_ARTIFACTS": str(basedir / "artifacts"),
    }
    farms = [
        LocalFarm(HERE / "two_masters.cfg", basedir / name,
                  env={**shared, "FARM_WEB_PORT": str(free_port()),
                       "FARM_PB_PORT": str(free_port()),
                       "FARM_JANITOR_INTERVAL": JANITOR_INTERVALS[name]})
        for name in ("a", "b")
    ]
    try:
        for farm in farms:
            farm.create()
            done = subprocess.run(
                [BIN / "buildbot", "upgrade-master", str(farm.master_dir)],
                env={**os.environ, **farm.extra_env, "FARM_WORKER_PASSWORD": farm.password},
                capture_output=True, text=True, check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            farm.start()
        for farm in farms:
            wait_until_connected(farm, True)
        yield farms
    finally:
        for farm in farms:
            farm.stop()


def master_of(farm: LocalFarm) -> dict[str, Any]:
    """Buildbot's record (``name``, ``masterid``) of ``farm``'s master."""
    found = [m for m in farm.api("masters")["masters"]
             if m["name"].endswith(f":{farm.master_dir}")]
    assert len(found) == 1, found
    return dict(found[0])


def wait_until_connected(farm: LocalFarm, connected: bool, timeout: float = 60) -> None:
    """Wait until ``farm``'s worker is (or is no longer) connected to ``farm``'s master."""
    masterid = master_of(farm)["masterid"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = farm.api("workers/local-worker")["workers"]
        ids = {entry["masterid"] for w in workers for entry in w["connected_to"]}
        if (masterid in ids) == connected:
            return
        time.sleep(0.2)
    raise AssertionError(f"worker of {farm.master_dir} connected is not {connected}")


def run_worker(farm: LocalFarm, command: str) -> None:
    """``buildbot-worker start|stop`` for ``farm``'s worker; ``start`` waits until it connects."""
    env = {**os.environ, **farm.extra_env, "FARM_WORKER_PASSWORD": farm.password}
    quiet = ["--quiet"] if command == "start" else []
    done = subprocess.run([BIN / "buildbot-worker", command, *quiet, str(farm.worker_dir)],
                          env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    if command == "start":
        farm.wait_for_worker()


def builds_of(farm: LocalFarm, builder: str, key: str) -> list[dict[str, Any]]:
    """Buildbot's builds of ``builder`` that carry build key ``key``, oldest first."""
    builds = farm.api(f"builders/{builder}/builds?property=farm_build_key")["builds"]
    return sorted((b for b in builds if b["properties"].get("farm_build_key", [None])[0] == key),
                  key=lambda b: b["buildid"])


def status_of(farm: LocalFarm, key: str) -> dict[str, Any]:
    """The farm's ``GET /api/build/{key}`` answer at ``farm``."""
    code, body, _ = call(api(farm, f"build/{key}"))
    assert code == 200, body
    return dict(json.loads(body))


def submit(farm: LocalFarm, scheduler: str, n: str) -> str:
    """``POST /api/build`` at ``farm``; the key of the new job."""
    code, body, _ = call(api(farm, "build"), {"scheduler": scheduler, "n": n})
    assert code == 202, body
    return str(json.loads(body)["key"])


def test_each_key_is_built_exactly_once_across_masters_and_served_by_both(
    masters: list[LocalFarm],
) -> None:
    """Eight keys, each requested twice at each master at once, give eight builds in all,
    one attempt each, and every artifact downloads from both masters."""
    numbers = [str(n) for n in range(8)]
    requests = [(farm, n) for n in numbers for farm in masters for _ in range(2)]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(
            lambda r: call(api(r[0], "build"), {"scheduler": "tool", "n": r[1]}), requests))
    keys: dict[str, set[str]] = {}
    for (_farm, n), (code, body, _) in zip(requests, answers):
        assert code == 202, body
        keys.setdefault(n, set()).add(json.loads(body)["key"])
    assert all(len(found) == 1 for found in keys.values()), keys

    masterids = {master_of(farm)["masterid"] for farm in masters}
    for n, (key,) in keys.items():
        code, body, _ = call(api(masters[int(n) % 2], f"compat?scheduler=tool&n={n}"))
        assert (code, body) == (200, f"tool {n}\n".encode())
        for farm in masters:
            code, body, _ = call(api(farm, f"download/{key}"))
            assert (code, body) == (200, f"tool {n}\n".encode())
        builds = builds_of(masters[0], "tool", key)
        assert [b["results"] for b in builds] == [SUCCESS], builds
        assert builds[0]["masterid"] in masterids
        attempts = status_of(masters[1], key)["attempts"]
        assert [(a["attempt"], a["result"], a["build_id"]) for a in attempts] == [
            (1, "success", builds[0]["buildid"])]
    assert len(masters[0].api("builders/tool/builds")["builds"]) == len(numbers)


def test_a_job_submitted_at_one_master_and_built_on_the_other_completes(
    masters: list[LocalFarm],
) -> None:
    """With a's worker gone, a's build request runs on b's worker and its job still completes."""
    a, b = masters
    run_worker(a, "stop")
    try:
        wait_until_connected(a, False)
        key = submit(a, "tool", "100")
        time.sleep(1)
        assert status_of(b, key)["status"] == "queued"
        submit(b, "tool", "101")  # b's next free moment takes a's unclaimed request too
        code, body, _ = call(api(a, "compat?scheduler=tool&n=100"))
        assert (code, body) == (200, b"tool 100\n")
    finally:
        run_worker(a, "start")
        wait_until_connected(a, True)
    builds = builds_of(a, "tool", key)
    assert [(x["results"], x["masterid"]) for x in builds] == [
        (SUCCESS, master_of(b)["masterid"])]
    attempts = status_of(a, key)["attempts"]
    assert [(x["master"], x["result"]) for x in attempts] == [(master_of(a)["name"], "success")]


def test_one_masters_janitor_requeues_a_build_that_broke_on_the_other_once(
    masters: list[LocalFarm],
) -> None:
    """A build that ends EXCEPTION on a is requeued by b's janitor and built exactly once more."""
    a, b = masters
    key = submit(a, "flaky", "200")
    code, body, _ = call(api(b, "compat?scheduler=flaky&n=200"))
    assert (code, body) == (200, b"flaky 200\n")
    code, body, _ = call(api(a, f"download/{key}"))
    assert (code, body) == (200, b"flaky 200\n")
    time.sleep(3)  # several more sweeps of b's janitor: none may build the job again
    builds = builds_of(a, "flaky", key)
    assert [x["results"] for x in builds] == [EXCEPTION, SUCCESS]
    assert builds[0]["masterid"] == master_of(a)["masterid"]
    status = status_of(a, key)
    assert status["status"] == "succeeded"
    assert [(x["attempt"], x["master"], x["result"]) for x in status["attempts"]] == [
        (1, master_of(a)["name"], "exception"), (2, master_of(b)["name"], "success")]
