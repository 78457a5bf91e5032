"""``farm-remote.pyz container-task``: a task on this host's engine, run as a worker runs it.

The program runs from the built archive, in a directory beside a build directory, against
the real test engine (and a private dockerd for the engine dying under a task).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
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


class ArchiveCutter:
    """A unix socket in front of the real engine that passes every call through, except
    that its answer to the archive of ``path`` is cut after ``keep`` bytes of tar (a
    complete HTTP answer with a broken archive in it)."""

    def __init__(self, socket_path: Path, engine_socket: Path, path: str, keep: int) -> None:
        self.engine_socket = str(engine_socket)
        self.wanted = f"/archive?path={urllib.parse.quote(path, safe='')}".encode()
        self.keep = keep
        self.cut = 0
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(socket_path))
        self.listener.listen()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._carry, args=(client,), daemon=True).start()

    def _carry(self, client: socket.socket) -> None:
        engine = socket.socket(socket.AF_UNIX)
        engine.connect(self.engine_socket)
        head = b""
        while b"\r\n\r\n" not in head:
            head += client.recv(65536)
        if head.startswith(b"GET ") and self.wanted in head.split(b"\r\n")[0]:
            self._cut(client, engine, head)
            return
        engine.sendall(head)
        threading.Thread(target=_pipe, args=(client, engine), daemon=True).start()
        _pipe(engine, client)

    def _cut(self, client: socket.socket, engine: socket.socket, head: bytes) -> None:
        engine.sendall(head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
        answer = b""
        while data := engine.recv(65536):
            answer += data
        _, body = answer.split(b"\r\n\r\n", 1)
        tar = b""
        while body:  # the engine's chunked encoding
            size_line, body = body.split(b"\r\n", 1)
            size = int(size_line, 16)
            tar, body = tar + body[:size], body[size + 2:]
        self.cut += 1
        kept = tar[:self.keep]
        client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nContent-Length: "
                       + str(len(kept)).encode() + b"\r\nConnection: close\r\n\r\n" + kept)
        client.close()
        engine.close()

    def stop(self) -> None:
        """Stop taking connections."""
        self.listener.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def test_a_broken_archive_of_the_changes_writes_nothing(
    tmp_path: Path, busybox_image: str, docker_engine: DockerEngine
) -> None:
    """An archive of the changes that ends mid-file fails the task clearly; nothing is written."""
    cutter = ArchiveCutter(tmp_path / "cut.sock", docker_engine.socket_path, "/work/src/out",
                           keep=1536)
    try:
        command = "mkdir out && head -c 8192 /dev/urandom > out/a && echo b > b.txt"
        spec = task_spec(busybox_image, command, f"unix://{tmp_path}/cut.sock")
        result, _, _ = finish(tmp_path, start(tmp_path, spec))
    finally:
        cutter.stop()
    assert cutter.cut == 1
    assert result["status"] == 0
    assert "the Docker engine's archive of /work/src/out cannot be read" in result["error"]
    assert "nothing was written" in result["error"]
    assert sorted(p.name for p in (tmp_path / "build" / "src").iterdir()) == []
