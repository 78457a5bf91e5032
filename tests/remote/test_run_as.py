"""``--run-as USER``: an agent started as root serves as USER, for good, keeping its secret."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildbot_farm.leases.buildlet_user import BUILDLET_USER, ensure_buildlet_user
from buildbot_farm.leases.providers.isolation import farm_buildlets_dir
from buildbot_farm.private_dirs import make_private_dir
from tests.remote.test_buildlet_agent import AGENT, SECRET, RunningAgent

# The system's Python: the one running the tests may live where the user cannot reach.
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture
def dropped_agent(tmp_path: Path) -> Iterator[RunningAgent]:
    """An agent started as root with --run-as farm-buildlet, in a workdir of that user's."""
    assert ensure_buildlet_user() == BUILDLET_USER, "the tests run as root, to add the user"
    home = farm_buildlets_dir(tmp_path)
    make_private_dir(home)
    work = home / "work"
    work.mkdir(mode=0o700)
    shutil.chown(work, BUILDLET_USER, BUILDLET_USER)
    secret_file = tmp_path / "secret"  # root's, 0600: the user never reads it
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, *AGENT, "--listen", "127.0.0.1:0", "--workdir", str(work),
         "--secret-file", str(secret_file), "--run-as", BUILDLET_USER],
        stdout=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("BUILDLET-READY "), (line, proc.wait(5))
    running = RunningAgent(proc, line.split()[1], work)
    yield running
    running.stop()
    shutil.rmtree(home, ignore_errors=True)


def test_commands_run_as_the_user_without_a_way_back_to_root(
    dropped_agent: RunningAgent, tmp_path: Path
) -> None:
    """Commands run as the user with no-new-privileges; the secret file and the agent's own
    memory and environment are out of their reach."""
    output, final = dropped_agent.run("sh", "-c", "id -un; grep NoNewPrivs /proc/self/status")
    assert final["exit_code"] == 0, output
    assert output.decode().split() == [BUILDLET_USER, "NoNewPrivs:", "1"]
    agent_pid = dropped_agent.proc.pid
    for attempt in (f"cat {tmp_path}/secret", f"cat /proc/{agent_pid}/environ",
                    f"head -c 100 /proc/{agent_pid}/mem", "su -c id root </dev/null"):
        output, final = dropped_agent.run("sh", "-c", attempt)
        assert final["exit_code"] != 0, (attempt, output)
        assert SECRET.encode() not in output
    assert os.stat(dropped_agent.workdir).st_uid != 0
