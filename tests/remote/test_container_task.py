"""``farm-remote.pyz container-task``: a task on this host's engine, run as a worker runs it.

The program runs from the built archive, in a directory beside a build directory, against
the real test engine (and a private dockerd for the engine dying under a task).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.containers._engine import ContainerConfig, create_body
from buildbot_farm.containers._run import TaskRun, labels_for
from buildbot_farm.private_dirs import remote_archive
from tests.harness.docker_engine import DockerEngine
from tests.harness.images import ensure_busybox_image
from tests.remote.test_python39 import python39

pytestmark = pytest.mark.docker


def task_spec(image: str, command: str, engine: str | None, **more: Any) -> dict[str, Any]:
    """What the master sends for a task mapping ``src`` to /work/src."""
    name = TaskRun.unique_name("program-test")
    config = ContainerConfig(name, image, ["sh", "-c", command], {"FARM_OUTPUTS": "/.farm/outputs"},
                             "/work/src", labels_for("program-test"), None, {"pids_limit": 64})
    return {"engine": engine, "name": name, "image": image, "create": create_body(config),
            "network": None, "inputs": [["src", "/work/src"]], "outputs": None,
            "workdir": "/work/src", "timeout": None, "pull": False, "build_dir": "../build",
            **more}


def start(tmp_path: Path, spec: dict[str, Any], python: str = "python3") -> subprocess.Popen:
    """Start the program as the step does: in a directory beside the build directory."""
    (tmp_path / "build" / "src").mkdir(parents=True, exist_ok=True)
    run_dir = tmp_path / ".farm-task-1"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "task.json").write_text(json.dumps(spec))
    return subprocess.Popen(
        [python, str(remote_archive()), "container-task", "task.json", "result.json"],
        cwd=run_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(tmp_path: Path, process: subprocess.Popen) -> tuple[dict[str, Any], str, str]:
    """The result, stdout and stderr of a program that ends."""
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    result = json.loads((tmp_path / ".farm-task-1" / "result.json").read_text())
    return result, out.decode(), err.decode()


def test_a_task_runs_and_its_changes_are_applied_under_python_3_9(
    tmp_path: Path, busybox_image: str, docker_engine: DockerEngine
) -> None:
    """Under Python 3.9: inputs go in, output streams out, changes and properties come back."""
    (tmp_path / "build" / "src").mkdir(parents=True)
    (tmp_path / "build" / "src" / "in.txt").write_text("given\n")
    (tmp_path / "build" / "src" / "gone.txt").write_text("delete me\n")
    command = ("cat in.txt; echo err >&2; rm gone.txt; mkdir out; cp in.txt out/copy.txt;"
               " echo v=1 >> $FARM_OUTPUTS")
    spec = task_spec(busybox_image, command, f"unix://{docker_engine.socket_path}")
    result, out, err = finish(tmp_path, start(tmp_path, spec, python39()))
    assert result["error"] is None
    assert result["status"] == 0
    assert result["properties"] == {"v": "1"}
    assert "given" in out
    assert "err" in err
    assert "copied 'src' from the worker to /work/src" in out
    assert (tmp_path / "build" / "src" / "out" / "copy.txt").read_text() == "given\n"
    assert not (tmp_path / "build" / "src" / "gone.txt").exists()
    assert result["manifest"]["deleted"] == ["src/gone.txt"]
    assert not (tmp_path / ".farm-task-1" / "changes.tar").exists()


def test_no_engine_on_the_worker_says_what_to_do(tmp_path: Path, busybox_image: str) -> None:
    """With no engine at the socket the task fails at once, saying how to give it one."""
    spec = task_spec(busybox_image, "true", f"unix://{tmp_path}/no-docker.sock")
    result, _, _ = finish(tmp_path, start(tmp_path, spec))
    assert result["status"] is None
    assert f"no Docker engine answers on this worker at unix://{tmp_path}/no-docker.sock" in (
        result["error"])
    assert "engine='master'" in result["error"]


def test_a_socket_url_that_is_not_unix_is_refused(tmp_path: Path, busybox_image: str) -> None:
    """Only a unix socket names the worker's engine."""
    spec = task_spec(busybox_image, "true", "tcp://127.0.0.1:1")
    result, _, _ = finish(tmp_path, start(tmp_path, spec))
    assert "is not a unix socket URL" in result["error"]


def test_the_engine_dying_under_a_task_fails_it_clearly(tmp_path: Path) -> None:
    """Stopping the engine while the task runs ends the program with a clear error."""
    private = DockerEngine(Path(tempfile.mkdtemp(prefix="farm-dockerd-", dir="/tmp")))
    try:
        private.ensure()
        client = private.client()
        image = ensure_busybox_image(client)
        client.close()
        spec = task_spec(image, "echo up; sleep 60", f"unix://{private.socket_path}")
        process = start(tmp_path, spec)
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if line in (b"up\n", b""):
                break
        assert line == b"up\n"
        private.stop()
        result, _, _ = finish(tmp_path, process)
        assert result["status"] is None
        assert f"the Docker engine at unix://{private.socket_path}" in result["error"]
        assert "answer" in result["error"]
    finally:
        private.stop()
        shutil.rmtree(private.state_dir or "", ignore_errors=True)
