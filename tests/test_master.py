"""A real Buildbot master and worker with the farm: the demo, checkconfig, and PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from buildbot_farm import db
from buildbot_farm.demo import LocalFarm
from buildbot_farm.example import DEMO_SECRETS, EXAMPLE_CONFIG, fill_secrets
from tests.db.conftest import schema_dsn
from tests.harness.ports import free_port

BIN = Path(sys.executable).parent
NEWEST = db.load_migrations("sqlite")[-1].version
pytestmark = pytest.mark.master


def run_demo(basedir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``buildbot-farm demo --once`` in ``basedir`` on free ports, ``env`` added to the
    environment; the finished process."""
    environment = {
        **os.environ,
        "FARM_WEB_PORT": str(free_port()),
        "FARM_PB_PORT": str(free_port()),
        **env,
    }
    return subprocess.run(
        [BIN / "buildbot-farm", "demo", "--once", "--basedir", str(basedir)],
        env=environment, capture_output=True, text=True, timeout=600, check=False,
    )


def test_demo_runs_a_green_build_on_sqlite(tmp_path: Path) -> None:
    """The demo starts a real master and worker, and the example build succeeds on SQLite."""
    done = run_demo(tmp_path / "demo")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    assert f"farm service up on sqlite (schema {NEWEST})" in done.stdout
    assert (tmp_path / "demo/master/farm.sqlite").exists()
    assert not (tmp_path / "demo/master/twistd.pid").exists(), "the master was left running"
    assert not (tmp_path / "demo/worker/twistd.pid").exists(), "the worker was left running"


def test_master_runs_the_farm_on_postgresql(tmp_path: Path, pg_dsn: str) -> None:
    """With db_url on PostgreSQL the master's farm service migrates it and reports it."""
    done = run_demo(tmp_path / "demo", FARM_DB_URL=schema_dsn(pg_dsn, "demo_master"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"farm service up on postgresql (schema {NEWEST})" in done.stdout


def test_master_refuses_to_start_when_the_database_is_unreachable(tmp_path: Path) -> None:
    """An unreachable PostgreSQL stops the master's start with one error, naming db_url."""
    unreachable = f"postgresql://postgres@127.0.0.1:{free_port()}/farm"
    done = run_demo(tmp_path / "demo", FARM_DB_URL=unreachable)
    assert done.returncode == 1
    log = (tmp_path / "demo/master/twistd.log").read_text()
    assert "FarmService: db_url: cannot connect to the farm database" in log
    assert "check that PostgreSQL is running" in log
    assert "BuildMaster startup failed" in log
    # The cause is the one traceback: stopping the never-started service adds nothing.
    assert log.count("Traceback") == 1, log
    assert "Unhandled error" not in log, log
    assert "already stopped" not in log, log


def secrets_env(directory: Path) -> dict[str, str]:
    """The environment that points the example configuration at a filled secrets ``directory``."""
    fill_secrets(directory, DEMO_SECRETS)
    return {**os.environ, "FARM_SECRETS_DIR": str(directory)}


def test_checkconfig_passes_on_the_example(tmp_path: Path) -> None:
    """`buildbot checkconfig` accepts the packaged example configuration, given its secrets."""
    done = subprocess.run(
        [BIN / "buildbot", "checkconfig", str(EXAMPLE_CONFIG)],
        capture_output=True, text=True, check=False, env=secrets_env(tmp_path / "secrets"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Config file is good!" in done.stdout


def test_the_demo_fills_the_examples_secrets_directory(tmp_path: Path) -> None:
    """The demo's secrets are random, kept across runs, mode 0600 in a 0700 directory."""
    first = fill_secrets(tmp_path / "secrets", DEMO_SECRETS, {"worker-password": "pw-1"})
    again = fill_secrets(tmp_path / "secrets", DEMO_SECRETS, {"worker-password": "pw-2"})
    assert again == {**first, "worker-password": "pw-2"}
    assert len(set(first.values())) == len(DEMO_SECRETS)
    assert all(len(v) >= 16 for n, v in first.items() if n != "worker-password")
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    for name in DEMO_SECRETS:
        assert (tmp_path / "secrets" / name).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "secrets" / "worker-password").read_text() == "pw-2\n"
    text = EXAMPLE_CONFIG.read_text()
    assert "change-me" not in text
    assert all(f'util.Secret("{name}")' in text for name in DEMO_SECRETS)


def test_checkconfig_names_each_bad_farm_argument(tmp_path: Path) -> None:
    """`buildbot checkconfig` reports every bad FarmService argument by name."""
    text = EXAMPLE_CONFIG.read_text()
    bad = text.replace(
        'db_url=os.environ.get("FARM_DB_URL", "sqlite:///farm.sqlite"),',
        'db_url="mysql://h/db", db_timeout=0,',
    )
    assert bad != text
    config = tmp_path / "master.cfg"
    config.write_text(bad)
    done = subprocess.run(
        [BIN / "buildbot", "checkconfig", str(config)], capture_output=True, text=True,
        check=False, env=secrets_env(tmp_path / "secrets"),
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "FarmService: db_url 'mysql://h/db' has the unknown scheme 'mysql'" in output
    assert "FarmService: db_timeout must be a number of seconds > 0" in output


def test_entry_points_load_through_buildbot_plugins() -> None:
    """`from buildbot.plugins import util` finds FarmService, and the www plugin is registered."""
    from buildbot.plugins import util
    from buildbot.plugins.db import get_plugins

    from buildbot_farm.service import FarmService

    assert util.FarmService is FarmService
    assert "farm" in get_plugins("www", None, load_now=True)


def test_stop_kills_a_master_stuck_in_its_shutdown(tmp_path: Path) -> None:
    """A master that does not end on ``buildbot stop`` (here: stopped with SIGSTOP, as one
    waiting forever for a build to finish would be) is killed: nothing is left running."""
    config = tmp_path / "master.cfg"
    config.write_text(EXAMPLE_CONFIG.read_text())
    farm = LocalFarm(config, tmp_path / "farm", env={
        "FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port()),
    })
    farm.create()
    farm.start_master()
    pid = int((farm.master_dir / "twistd.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        farm.stop()
        state = Path(f"/proc/{pid}/stat")
        assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
