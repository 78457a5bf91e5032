"""The agent's own lease deadline: renewed by POST /deadline, enforced by halting itself."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from buildbot_farm.remote.protocol import DEADLINE_EXIT
from tests.remote.test_buildlet_agent import (
    RunningAgent,
    process_alive,
    start_agent,
    wait_until_gone,
)


def set_deadline(agent: RunningAgent, seconds: str) -> tuple[int, dict[str, object]]:
    """POST ``seconds`` to the agent's /deadline; the status and the decoded JSON answer."""
    status, _, body = agent.post_form("/deadline", [("seconds", seconds)])
    return status, json.loads(body)


def test_without_a_deadline_the_agent_runs_on(tmp_path: Path) -> None:
    """An agent started without --deadline has none until one is set, and says so."""
    agent = start_agent(tmp_path)
    try:
        assert agent.json("GET", "/deadline") == (200, {"seconds": None})
        status, answer = set_deadline(agent, "30")
        assert status == 200
        assert 29 < float(str(answer["seconds"])) <= 30
    finally:
        assert agent.stop() == 0


@pytest.mark.parametrize("seconds", ["0", "-1", "soon", "nan", "1e12"])
def test_a_deadline_must_be_a_sensible_number_of_seconds(tmp_path: Path, seconds: str) -> None:
    """Zero, negative, non-numeric and absurd deadlines are refused with 400 and a reason."""
    agent = start_agent(tmp_path)
    try:
        status, answer = set_deadline(agent, seconds)
        assert status == 400
        assert "seconds" in str(answer["error"])
        assert agent.json("GET", "/deadline") == (200, {"seconds": None})
    finally:
        assert agent.stop() == 0


def test_renewals_keep_the_agent_and_a_missed_one_halts_it(tmp_path: Path) -> None:
    """Renewed before each deadline the agent lives on; once nobody renews it, it kills its
    commands and its pre-started worker, removes its workdir and owned paths, and exits 0."""
    owned = tmp_path / "home"
    owned.mkdir()
    (owned / "agent-state").write_text("made for this buildlet\n")
    agent = start_agent(tmp_path, "--deadline", "1.5", "--owned-path", str(owned),
                        "--prestart-worker", sys.executable)
    socket_path = agent.run("sh", "-c", "echo $FARM_PRESTARTED_WORKER")[0].decode().strip()
    prestarted = processes_naming(socket_path)
    assert prestarted, "the pre-started worker is not running"
    conn, frames = agent.start_exec([("cmd", "sh"), ("cmdArg", "-c"),
                                     ("cmdArg", "echo $$; exec sleep 60")])
    try:
        command = int(frames.next()[1])
        for _ in range(4):
            time.sleep(0.7)
            assert set_deadline(agent, "1.5")[0] == 200
        assert agent.proc.poll() is None, "the agent halted although it was renewed"
        assert agent.proc.wait(10) == DEADLINE_EXIT
        assert wait_until_gone(command)
        assert all(wait_until_gone(pid) for pid in prestarted)
        assert not Path(socket_path).parent.exists()
        assert not agent.workdir.exists()
        assert not owned.exists()
        log = (tmp_path / "agent.log").read_text()
        assert "no coordinator renewed the lease by its deadline" in log
    finally:
        conn.close()


def processes_naming(text: str) -> list[int]:
    """The live processes with ``text`` in their command line."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes() and process_alive(int(cmdline.parent.name)):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found
