"""The pre-started worker: a Python that has imported buildbot-worker, waiting to become one.

With ``--prestart-worker PYTHON`` the agent starts ``PYTHON farm-remote.pyz prestart SOCKET
AGENT_PID`` (:func:`serve`) in its own session: it listens on the unix socket at once (a client
that comes during the imports waits for them), imports buildbot-worker, then serves one
hand-off (:mod:`buildbot_farm.remote.handoff`): a JSON line ``{"env", "cwd", "argv"}``,
answered ``OK`` (or ``REFUSED why``); then the connection becomes its stdout and stderr and it
runs the program ``argv`` names (``argv[0]`` a script or a .pyz, as ``python3`` would).
Once the agent, or after the hand-off the client, is gone, it kills its process group:
nothing outlives the buildlet. ``/status`` says ``prestarted_worker``.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

from buildbot_farm.remote.environment import PRESTART_SOCKET_ENV
from buildbot_farm.remote.errors import SetupError
from buildbot_farm.remote.execs import kill_group

# What the pre-started process imports before it waits: the worker's start-up, and twistd.
PREIMPORTED = (
    "buildbot_worker.bot", "buildbot_worker.scripts.runner", "buildbot_worker.scripts.start",
    "buildbot_worker.scripts.create_worker", "twisted.scripts.twistd",
)


class PrestartedWorker:
    """A process that has imported buildbot-worker and waits, on a unix socket, to become one.

    Its state in ``/status``: ``starting`` (importing), ``waiting``, ``handed off``, or
    ``exited CODE``. Execs find the socket's path in ``FARM_PRESTARTED_WORKER``. ``python``
    runs ``archive`` (the agent's farm-remote.pyz) with ``prestart`` (:func:`serve`).
    """

    def __init__(self, python: str, archive: str) -> None:
        self.python = python
        self.archive = archive
        self._dir = tempfile.mkdtemp(prefix="farm-worker-")
        self.socket_path = os.path.join(self._dir, "hand-off.sock")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (its stderr is the agent's); SetupError if it cannot start."""
        try:
            self._proc = subprocess.Popen(
                [self.python, self.archive, "prestart", self.socket_path, str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self.stop()
            raise SetupError(f"--prestart-worker {self.python!r} cannot start: "
                             f"{exc.strerror or exc}") from None
        os.environ[PRESTART_SOCKET_ENV] = self.socket_path

    def state(self) -> str:
        """Where the process is: starting, waiting, handed off, or exited CODE."""
        code = None if self._proc is None else self._proc.poll()
        if code is not None:
            return f"exited {code}"
        if os.path.exists(self.socket_path + ".taken"):
            return "handed off"
        return "waiting" if os.path.exists(self.socket_path + ".ready") else "starting"

    def stop(self) -> None:
        """Kill the process's group (the worker it became, too) and remove its socket."""
        if self._proc is not None:
            kill_group(self._proc)
            self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)



class _Waiting:
    """The pre-started process's side: its socket and the lock that guards its directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Held while a file is made in the socket directory, and by end() for good: so end()
        # never removes the directory while the main thread adds to it (it would stay behind).
        self._files = threading.Lock()

    def end(self) -> None:
        """Remove the socket, its markers and (once empty) its directory, then kill this
        process's group, or only this process when it leads none (never returns)."""
        self._files.acquire()
        for suffix in ("", ".ready", ".taken"):
            with contextlib.suppress(OSError):
                os.unlink(self.path + suffix)
        with contextlib.suppress(OSError):  # never more: a directory that holds more stays
            os.rmdir(os.path.dirname(self.path))
        if os.getpgrp() == os.getpid():
            os.killpg(0, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    def mark(self, old: str | None, new: str) -> None:
        """Create the marker file ``path.new`` (renaming ``path.old`` when given)."""
        with self._files:
            if old is None:
                open(self.path + new, "w").close()
            else:
                os.rename(self.path + old, self.path + new)

    def bind(self) -> socket.socket:
        """Listen on the socket."""
        listener = socket.socket(socket.AF_UNIX)
        with self._files:
            listener.bind(self.path)
        listener.listen(1)
        return listener


def _watch(alive: Callable[[], None], end: Callable[[], None]) -> None:
    """In a daemon thread, call ``end`` once ``alive`` returns (what it waits for is gone)."""

    def run() -> None:
        alive()
        end()

    threading.Thread(target=run, daemon=True).start()


def read_request(conn: socket.socket) -> dict[str, Any]:
    """Read the hand-off's JSON line; SystemExit if the client hangs up before its end."""
    line = b""
    while not line.endswith(b"\n"):
        data = conn.recv(65536)
        if not data:
            sys.exit("prestarted worker: the client hung up before sending its request")
        line += data
    request = json.loads(line)
    if not isinstance(request, dict):
        raise ValueError(f"the hand-off is {type(request).__name__}, not a JSON object")
    return request


def serve(path: str, agent_pid: int) -> None:
    """Be the pre-started worker: wait for one hand-off on ``path``, then run what it names."""
    waiting = _Waiting(path)

    def agent_alive() -> None:
        while os.getppid() == agent_pid:
            time.sleep(0.5)

    _watch(agent_alive, waiting.end)
    listener = waiting.bind()
    for name in PREIMPORTED:
        __import__(name)
    waiting.mark(None, ".ready")
    conn, _ = listener.accept()
    listener.close()
    waiting.mark(".ready", ".taken")
    try:
        request = read_request(conn)
        argv = [str(arg) for arg in request["argv"]]
        env = {str(k): str(v) for k, v in request["env"].items()}
        os.chdir(str(request["cwd"]))
        with open(argv[0], "rb"):
            pass  # what it names must be there to run, or the client runs it itself
    except Exception as exc:
        conn.sendall(f"REFUSED {exc!r}\n".encode())
        sys.exit(f"prestarted worker: refused the hand-off: {exc!r}")
    conn.sendall(b"OK\n")
    os.environ.update(env)

    def client_alive() -> None:
        while conn.recv(65536):
            pass

    _watch(client_alive, waiting.end)
    os.dup2(conn.fileno(), 1)
    os.dup2(conn.fileno(), 2)
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")


def main(argv: list[str]) -> int:
    """``prestart SOCKET AGENT_PID``: what the agent starts for ``--prestart-worker``."""
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: farm-remote.pyz prestart SOCKET AGENT_PID", file=sys.stderr)
        return 2
    serve(argv[0], int(argv[1]))
    return 0
