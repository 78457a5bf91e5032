"""The pre-started worker's own side (``farm-remote.pyz prestart``), run as a process."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from buildbot_farm.private_dirs import remote_archive
from buildbot_farm.remote import handoff, prestart
from tests.remote.test_buildlet_agent import AGENT_PYTHON


def test_a_prestart_whose_agent_is_gone_removes_only_its_own_files(tmp_path: Path) -> None:
    """Ended because its agent is not its parent, it removes its socket but nothing else in
    the directory, and the directory stays while it holds anything else."""
    (tmp_path / "keep.txt").write_text("not the prestart's")
    done = subprocess.run(
        [AGENT_PYTHON, str(remote_archive()), "prestart", str(tmp_path / "hand-off.sock"),
         str(os.getpid() + 10**7)],  # no such agent: it ends at once
        start_new_session=True, capture_output=True, timeout=30, check=False)
    assert done.returncode == -9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_prestart_leaves_an_emptied_directory_behind_it_removed(tmp_path: Path) -> None:
    """The agent's socket directory, holding only the socket, goes with the process."""
    socket_dir = tmp_path / "farm-worker-x"
    socket_dir.mkdir()
    done = subprocess.run(
        [AGENT_PYTHON, str(remote_archive()), "prestart", str(socket_dir / "hand-off.sock"),
         str(os.getpid() + 10**7)],
        start_new_session=True, capture_output=True, timeout=30, check=False)
    assert done.returncode == -9
    assert not socket_dir.exists()


def test_bad_prestart_arguments_give_the_usage() -> None:
    """``prestart`` without a socket and an agent pid says how to call it."""
    assert prestart.main(["only-one"]) == 2


def test_the_hand_off_request_must_be_a_json_object() -> None:
    """A request line that is JSON but not an object is refused with a message saying so."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b'["argv"]\n')
        with pytest.raises(ValueError, match="not a JSON object"):
            prestart.read_request(ours)


def test_a_hand_off_without_a_prestarted_worker_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no FARM_PRESTARTED_WORKER there is no connection, and the reason says so."""
    monkeypatch.delenv("FARM_PRESTARTED_WORKER", raising=False)
    assert handoff.hand_off(["x.py"]) == (None, "this buildlet has none")


def test_a_hand_off_to_a_socket_nobody_serves_says_it_cannot_reach_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """A socket path with no pre-started worker behind it gives the path and the error."""
    monkeypatch.setenv("FARM_PRESTARTED_WORKER", str(tmp_path / "gone.sock"))
    conn, why = handoff.hand_off(["x.py"])
    assert conn is None
    assert why.startswith(f"cannot reach it at {tmp_path / 'gone.sock'}: ")
