"""The agent's pre-started worker (``--prestart-worker``) and FarmLatentWorker's hand-off to it.

The agents run with this test's Python, which has buildbot-worker; the "bootstrap" handed
over is a small probe instead of a real worker, which ``tests/leases`` and the attach
benchmark run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildbot_farm.remote.environment import RUN_REMOTE
from buildbot_farm.remote.handoff import USED_MESSAGE
from tests.remote.test_buildlet_agent import (
    AGENT,
    AGENT_PYTHON,
    RunningAgent,
    start_agent,
    wait_until_gone,
)

# Says whether it runs where buildbot-worker was imported before it (the pre-started process).
PROBE = """\
import os, sys
print("probe", os.environ["PROBE_VALUE"], "preimported", "buildbot_worker.bot" in sys.modules,
      "pid", os.getpid(), flush=True)
"""
SLEEPER = 'import time\nprint("worker up", flush=True)\ntime.sleep(60)\n'
WAIT = 30.0


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_line = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_for_state(agent: RunningAgent, state: str) -> None:
    """Poll /status until the pre-started worker is in ``state``."""
    deadline = time.monotonic() + WAIT
    while (seen := agent.json("GET", "/status")[1]["prestarted_worker"]) != state:
        assert time.monotonic() < deadline, f"still {seen!r}, not {state!r}"
        time.sleep(0.05)


def script(agent: RunningAgent, text: str) -> str:
    """Write ``text`` as a script in the agent's workdir; its path relative to the workdir."""
    (agent.workdir / "program.py").write_text(text)
    return "program.py"


def handoff_argv(program: str) -> list[tuple[str, str]]:
    """The exec form fields that run the agent's ``farm-remote.pyz handoff PROGRAM``."""
    return [("cmd", AGENT_PYTHON), ("cmdArg", "-c"), ("cmdArg", RUN_REMOTE),
            ("cmdArg", "handoff"), ("cmdArg", program)]


def hand_off(agent: RunningAgent, program: str, **env: str) -> tuple[str, dict[str, object]]:
    """Exec ``farm-remote.pyz handoff PROGRAM`` (as FarmLatentWorker execs ``worker``); its
    output and final status."""
    output, status = agent.run(
        AGENT_PYTHON, "-c", RUN_REMOTE, "handoff", program,
        env=f"PROBE_VALUE={env.get('probe', 'x')}",
    )
    return output.decode(), status


@pytest.fixture
def prestarting(tmp_path: Path) -> Iterator[RunningAgent]:
    """An agent with a pre-started worker that is waiting; stopped (cleanly) afterwards."""
    running = start_agent(tmp_path, "--prestart-worker", AGENT_PYTHON)
    wait_for_state(running, "waiting")
    yield running
    assert running.stop() == 0


def test_the_hand_off_runs_the_bootstrap_in_the_prestarted_process(
    prestarting: RunningAgent,
) -> None:
    """The exec's bootstrap runs in the process that imported buildbot-worker, with its env."""
    [prestarted] = children(prestarting.proc.pid)
    output, status = hand_off(prestarting, script(prestarting, PROBE), probe="handed-env")
    assert status["exit_code"] == 0, output
    assert output.startswith(USED_MESSAGE + "\n"), output
    assert f"probe handed-env preimported True pid {prestarted}" in output
    wait_for_state(prestarting, "exited 0")


def test_without_a_prestarted_worker_the_bootstrap_runs_in_the_exec(tmp_path: Path) -> None:
    """An agent without --prestart-worker reports none, and the exec says so and runs it itself."""
    agent = start_agent(tmp_path)
    try:
        assert agent.json("GET", "/status")[1]["prestarted_worker"] is None
        output, status = hand_off(agent, script(agent, PROBE))
        assert status["exit_code"] == 0, output
        assert "farm-worker: no pre-started worker (this buildlet has none); starting one" in output
        assert "probe x preimported False" in output
    finally:
        assert agent.stop() == 0


def test_a_dead_prestarted_worker_falls_back_to_the_normal_start(
    prestarting: RunningAgent,
) -> None:
    """When the waiting process has died, the exec says it cannot reach it and starts the worker."""
    [prestarted] = children(prestarting.proc.pid)
    os.kill(prestarted, signal.SIGKILL)
    wait_for_state(prestarting, "exited -9")
    output, status = hand_off(prestarting, script(prestarting, PROBE))
    assert status["exit_code"] == 0, output
    assert "farm-worker: no pre-started worker (cannot reach it at " in output
    assert "probe x preimported False" in output


def test_a_program_it_refuses_falls_back_to_the_normal_start(
    prestarting: RunningAgent,
) -> None:
    """A hand-off the waiting process cannot run is refused, and the exec tries it itself."""
    output, status = hand_off(prestarting, "no-such-program.py")
    assert "farm-worker: no pre-started worker (it answered REFUSED FileNotFoundError" in output
    assert "No such file" in output.split("starting one", 1)[1]
    assert status["exit_code"] == 1


def test_halt_kills_a_waiting_prestarted_worker(prestarting: RunningAgent) -> None:
    """POST /halt leaves no pre-started process behind."""
    [prestarted] = children(prestarting.proc.pid)
    assert prestarting.json("POST", "/halt") == (200, {"halted": True})
    assert prestarting.proc.wait(5) == 0
    assert wait_until_gone(prestarted)


def test_halt_kills_the_worker_a_prestarted_process_became(prestarting: RunningAgent) -> None:
    """Halting a buildlet whose worker came from the hand-off ends that worker too."""
    [prestarted] = children(prestarting.proc.pid)
    conn, frames = prestarting.start_exec(handoff_argv(script(prestarting, SLEEPER)))
    try:
        output = b""
        while b"worker up" not in output:
            output += frames.next()[1]
        assert USED_MESSAGE.encode() in output
        wait_for_state(prestarting, "handed off")
        assert prestarting.json("POST", "/halt") == (200, {"halted": True})
        assert prestarting.proc.wait(5) == 0
        assert wait_until_gone(prestarted)
    finally:
        conn.close()


def test_ending_the_exec_ends_the_handed_off_worker(prestarting: RunningAgent) -> None:
    """When the exec ends (here its client hangs up and it is killed, as the grace period
    would), the worker in the pre-started process dies with it."""
    [prestarted] = children(prestarting.proc.pid)
    conn, frames = prestarting.start_exec(handoff_argv(script(prestarting, SLEEPER)))
    exec_id = frames.header("X-Buildlet-Exec-Id")
    output = b""
    while b"worker up" not in output:
        output += frames.next()[1]
    conn.close()
    assert prestarting.json("POST", f"/exec/kill?id={exec_id}")[1]["killed"] is True
    assert wait_until_gone(prestarted)


@pytest.mark.parametrize("kill_after", [0.0, 0.2, 0.5, "waiting"])
def test_a_killed_agent_leaves_no_prestarted_orphan(
    tmp_path: Path, kill_after: float | str
) -> None:
    """SIGKILLing the agent (its own cleanup cannot run), while its pre-started worker imports
    or once it waits, still ends that process and removes its socket directory within seconds."""
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    agent = start_agent(tmp_path, "--prestart-worker", AGENT_PYTHON,
                        env={**os.environ, "TMPDIR": str(private_tmp)})
    [prestarted] = children(agent.proc.pid)
    [socket_dir] = private_tmp.glob("farm-worker-*")
    if kill_after == "waiting":
        wait_for_state(agent, "waiting")
    else:
        time.sleep(float(kill_after))
    agent.proc.kill()
    agent.proc.wait(5)
    assert wait_until_gone(prestarted)
    assert not socket_dir.exists()
    assert list(private_tmp.iterdir()) == []


def test_a_missing_prestart_python_stops_the_agent_with_a_clear_error(tmp_path: Path) -> None:
    """--prestart-worker naming no program makes the agent exit 2, naming the option."""
    secret = tmp_path / "secret"
    secret.write_text("s")
    done = subprocess.run(
        [AGENT_PYTHON, *AGENT, "--listen", "127.0.0.1:0", "--workdir",
         str(tmp_path / "work"), "--secret-file", str(secret),
         "--prestart-worker", str(tmp_path / "no-such-python")],
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "--prestart-worker" in done.stderr
    assert "cannot start" in done.stderr
