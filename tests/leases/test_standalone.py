"""`buildbot-farm coordinator` as its own process: kill -9 and restart lose no lease."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
import pytest_twisted

from buildbot_farm.leases import keys
from buildbot_farm.leases.client import CoordinatorClient
from buildbot_farm.leases.providers import ProcessProvider
from buildbot_farm.leases.providers.isolation import default_root
from tests.harness.ports import free_port
from tests.leases.conftest import plain_http

BIN = Path(sys.executable).parent
SECRET = "standalone-coordinator-secret"


class CoordinatorProcesses:
    """Starts coordinator processes on one port, database and state dir; kills them."""

    def __init__(self, start: Callable[[], str], processes: list[subprocess.Popen[str]]) -> None:
        self.start = start
        self._processes = processes

    def kill_nine(self) -> None:
        """SIGKILL the running coordinator: no cleanup of any kind."""
        process = self._processes[-1]
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
def coordinator_process(tmp_path: Path) -> Iterator[CoordinatorProcesses]:
    """Start (and restart) a coordinator process on one port, database and state dir."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    port = free_port()
    processes: list[subprocess.Popen[str]] = []

    def start() -> str:
        process = subprocess.Popen(
            [
                BIN / "buildbot-farm", "coordinator",
                "--db-url", f"sqlite:///{tmp_path / 'coordinator.sqlite'}",
                "--listen", f"127.0.0.1:{port}", "--secret-file", str(secret_file),
                "--state-dir", str(tmp_path / "state"), "--pool", "local=process:max=3",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("COORDINATOR-READY "), f"coordinator did not start: {line!r}"
        return line.split()[1]

    yield CoordinatorProcesses(start, processes)
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
    root = default_root(tmp_path / "state", "local")
    ProcessProvider(root, reactor=None).thd_reap(set())
    shutil.rmtree(root.parent, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_kill_nine_and_restart_keep_every_live_lease(
    coordinator_process: CoordinatorProcesses, tmp_path: Path
) -> None:
    """A lease survives kill -9 of the coordinator; a buildlet nobody owns is destroyed."""
    url = coordinator_process.start()
    alice = CoordinatorClient(
        url, "user-alice", keys.user_key(SECRET.encode(), "user-alice"), plain_http()
    )
    name = (await alice.create("local"))["Name"]
    output: list[bytes] = []
    await alice.exec(name, "sh", ["-c", "echo survived > marker; echo $$"], on_output=output.append)

    coordinator_process.kill_nine()
    root = default_root(tmp_path / "state", "local")
    agent_pid = int((root / name / "pid").read_text())
    os.kill(agent_pid, 0)  # the buildlet outlived its coordinator
    orphan = ProcessProvider(root, reactor=None)
    orphan.thd_spawn(root / "user-nobody-local-0", "orphan-secret")

    url = coordinator_process.start()
    alice = CoordinatorClient(
        url, "user-alice", keys.user_key(SECRET.encode(), "user-alice"), plain_http()
    )
    assert [b["Name"] for b in await alice.buildlets()] == [name]
    marker: list[bytes] = []
    status = await alice.exec(name, "cat", ["marker"], on_output=marker.append)
    assert status.ok
    assert b"".join(marker) == b"survived\n"
    assert int((root / name / "pid").read_text()) == agent_pid, "not the same buildlet"
    assert not (root / "user-nobody-local-0").exists(), "the orphan was not reaped"


def test_bad_pool_specs_are_refused_with_a_message(tmp_path: Path) -> None:
    """A malformed --pool exits 2 naming the problem, before anything starts."""
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    done = subprocess.run(
        [BIN / "buildbot-farm", "coordinator", "--db-url", "sqlite://", "--secret-file",
         str(secret), "--state-dir", str(tmp_path), "--pool", "local=process:maxx=3"],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 2
    assert "unknown option 'maxx'" in done.stderr
