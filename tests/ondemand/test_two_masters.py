"""Two real masters on one PostgreSQL: concurrent identical requests make one build request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from buildbot_farm.demo import LocalFarm
from tests.db.conftest import schema_dsn
from tests.harness.ports import free_port
from tests.ondemand.test_master import api, call

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.master, pytest.mark.postgres]


@pytest.fixture(scope="module")
def masters(tmp_path_factory: pytest.TempPathFactory, pg_dsn: str) -> Iterator[list[LocalFarm]]:
    """Two masters (config: two_masters.cfg), each with a worker, on one PostgreSQL."""
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
                       "FARM_PB_PORT": str(free_port())})
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
        yield farms
    finally:
        for farm in farms:
            farm.stop()


def test_each_key_gets_exactly_one_build_request_across_masters(
    masters: list[LocalFarm],
) -> None:
    """Six keys, each requested six times at once across both masters, give six buildsets.

    Only the submissions are checked here: running another master's build requests needs
    Buildbot's shared message queue (crossbar), which this test does not set up.
    """
    requests = [(farm, n) for n in range(6) for farm in masters for _ in range(3)]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: call(api(r[0], "build"), {"n": str(r[1])}), requests))
    keys: dict[int, set[str]] = {}
    for (_farm, n), (code, body, _) in zip(requests, answers):
        assert code == 202, body
        keys.setdefault(n, set()).add(json.loads(body)["key"])
    assert all(len(found) == 1 for found in keys.values())
    assert len(masters[0].api("buildsets")["buildsets"]) == 6
    for (key,) in keys.values():
        status = json.loads(call(api(masters[1], f"build/{key}"))[1])
        assert len(status["attempts"]) == 1
