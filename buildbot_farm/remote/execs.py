"""Running commands: a checked /exec request, how a command ended, the running ones."""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import select
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from buildbot_farm.remote.errors import AgentError, single
from buildbot_farm.remote.paths import Workdir


@dataclass
class ExecRequest:
    """A validated /exec request: the argv, where to run it and its environment."""

    argv: list[str]
    cwd: str
    env: dict[str, str]

    @classmethod
    def from_form(cls, form: dict[str, list[str]], workdir: Workdir) -> ExecRequest:
        """Check the gomote form fields; 400 for anything wrong."""
        cmd = single(form, "cmd")
        if not cmd:
            raise AgentError(400, "cmd is empty; give the command to run")
        # gomote sends mode=sys to look cmd up on PATH; the one lookup rule (a bare name is found
        # on PATH; a relative path with a slash is in the workdir, not in dir, as with Go's
        # buildlet, which also runs such a command in its own directory when dir is not given)
        # serves both modes.
        mode = single(form, "mode", "")
        if mode not in ("", "sys"):
            raise AgentError(400, f"mode {mode!r} is not supported; send 'sys' or leave it out")
        rel_dir = single(form, "dir", "")
        if "/" in cmd and not cmd.startswith("/"):
            if not rel_dir and mode != "sys":
                rel_dir = posixpath.dirname(cmd)
            cmd = workdir.resolve(cmd)
        rel_dir = rel_dir or "."
        cwd = workdir.resolve(rel_dir)
        if not os.path.isdir(cwd):
            raise AgentError(400, f"dir {rel_dir!r} is not a directory in the workdir")
        env = dict(os.environ, WORKDIR=workdir.root)
        for item in form.get("env", []):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise AgentError(400, f"env entry {item!r} is not KEY=VALUE")
            env[key] = value
        if form.get("path"):
            env["PATH"] = expand_path(form["path"], env.get("PATH", ""), workdir.root)
        return cls([cmd, *form.get("cmdArg", [])], cwd, env)


def expand_path(elements: list[str], original: str, workdir: str) -> str:
    """The PATH Go's exec form field ``path`` asks for: its elements joined with ':'.

    In each element ``$PATH`` stands for the original PATH, ``$WORKDIR`` for the work
    directory and ``$EMPTY`` for nothing; elements that end up empty are left out.
    """
    expanded = (element.replace("$PATH", original).replace("$WORKDIR", workdir)
                .replace("$EMPTY", "") for element in elements)
    return ":".join(element for element in expanded if element)


@dataclass
class ExecResult:
    """How a command ended, as the Process-State text and as the final frame's JSON."""

    exit_code: int | None
    signal_name: str | None
    state: str

    @classmethod
    def from_returncode(cls, code: int) -> ExecResult:
        """Describe a Popen return code (negative means killed by that signal)."""
        if code >= 0:
            return cls(code, None, "ok" if code == 0 else f"exit status {code}")
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"SIG{-code}"
        return cls(None, name, f"signal: {name}")

    def to_json(self) -> bytes:
        """Encode the final frame's payload."""
        payload = {"exit_code": self.exit_code, "signal": self.signal_name, "state": self.state}
        return json.dumps(payload).encode()


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group a command leads, if anything in it is still alive."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class ProcessTable:
    """The commands now running, so that shutting down can kill their process groups."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._closed = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._procs)

    @contextlib.contextmanager
    def tracking(self, proc: subprocess.Popen[bytes]) -> Iterator[None]:
        """Track proc for the block; once the table is closed, new commands are killed at once."""
        with self._lock:
            self._procs.add(proc)
            if self._closed:
                kill_group(proc)
        try:
            yield
        finally:
            with self._lock:
                self._procs.discard(proc)

    def kill_all(self) -> None:
        """Kill every running command's process group and refuse new ones."""
        with self._lock:
            self._closed = True
            for proc in self._procs:
                kill_group(proc)


def peer_closed(sock: socket.socket) -> bool:
    """Tell whether a socket that polled readable was closed by the client."""
    try:
        return not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def client_hung_up(client: socket.socket) -> bool:
    """Tell, without waiting, whether the client closed its connection."""
    readable, _, _ = select.select([client], [], [], 0)
    return bool(readable) and peer_closed(client)

