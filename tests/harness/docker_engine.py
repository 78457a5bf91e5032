"""A Docker engine for the tests: the one already running, or a dockerd started here."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import requests
from docker.errors import DockerException

DEFAULT_SOCKET = Path("/var/run/docker.sock")
INSTALL_HINT = "run `sudo tests/harness/install-system-packages.sh`, which installs docker.io"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class DockerUnavailable(RuntimeError):
    """No Docker engine answers and none could be started; the message says what to do."""


class DockerEngine:
    """The Docker engine the tests talk to, over a unix socket on this machine.

    ``ensure()`` uses an engine that already answers, else starts ``dockerd`` without
    networking (``--bridge=none``, no iptables); ``stop()`` ends only a daemon started here.
    With no ``state_dir`` that daemon uses dockerd's default socket and data root, so images
    stay cached between runs; with one, the socket, data root, exec root and pid file all live
    in it, which lets a second engine run beside a system one.
    """

    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = state_dir
        self.socket_path = state_dir / "docker.sock" if state_dir else DEFAULT_SOCKET
        self._process: subprocess.Popen[bytes] | None = None
        self._logdir: Path | None = None

    def client(self) -> docker.DockerClient:
        """Return a new client of this engine; the caller closes it."""
        return docker.DockerClient(base_url=f"unix://{self.socket_path}")

    def ensure(self) -> None:
        """Make sure an engine answers on ``socket_path``, starting dockerd if none does."""
        if self._answers():
            return
        dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")
        if dockerd is None:
            raise DockerUnavailable(
                f"no Docker engine answers on {self.socket_path} and dockerd is not installed:"
                f" {INSTALL_HINT}"
            )
        if os.geteuid() != 0:
            raise DockerUnavailable(
                f"no Docker engine answers on {self.socket_path}, and starting dockerd needs"
                " root: start the engine (for example `sudo systemctl start docker`) or run"
                " the tests as root"
            )
        self._start(dockerd)

    def stop(self) -> None:
        """Stop the daemon if ``ensure()`` started it (SIGTERM, then SIGKILL); else do nothing."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
        if self._logdir is not None:
            shutil.rmtree(self._logdir)
            self._logdir = None

    def _start(self, dockerd: str) -> None:
        self._logdir = Path(tempfile.mkdtemp(prefix="farm-dockerd-"))
        logfile = self._logdir / "dockerd.log"
        command = [
            dockerd,
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            f"--host=unix://{self.socket_path}",
        ]
        if self.state_dir is not None:
            command += [
                f"--data-root={self.state_dir / 'data'}",
                f"--exec-root={self.state_dir / 'exec'}",
                f"--pidfile={self.state_dir / 'docker.pid'}",
            ]
            self.state_dir.mkdir(parents=True, exist_ok=True)
        with logfile.open("wb") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._answers():
            status = self._process.poll()
            if status is not None:
                self._process = None
                raise DockerUnavailable(
                    f"dockerd exited with status {status} while starting; last lines of"
                    f" {logfile}:\n{_tail(logfile)}"
                )
            if time.monotonic() > deadline:
                self._logdir = None  # keep the log for whoever reads the error
                self.stop()
                raise DockerUnavailable(
                    f"dockerd did not answer on {self.socket_path} within"
                    f" {START_TIMEOUT:.0f} s; last lines of {logfile}:\n{_tail(logfile)}"
                )
            time.sleep(0.2)

    def _answers(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            client = self.client()
        except DockerException:
            return False
        try:
            return bool(client.ping())
        except (DockerException, requests.RequestException):
            return False
        finally:
            client.close()


def _tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"
