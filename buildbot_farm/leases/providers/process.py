"""The ``process`` provider: each buildlet is the agent as a local process (the embedded default).

Every buildlet gets a directory ``ROOT/NAME`` holding its work directory, its secret, its
agent's log and pid. Agents run in sessions of their own, so they outlive a coordinator
that is killed; the directory is what a restarted coordinator uses to find them again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from twisted.internet import task, threads

from buildbot_farm.agent import AGENT_PATH
from buildbot_farm.leases.providers.base import (
    AGENT_START_DEADLINE,
    BuildletProvider,
    ProviderError,
    StartedBuildlet,
)


class ProcessProvider(BuildletProvider):
    """Runs buildlet agents as processes of this machine under ``root``.

    ``python`` runs the agent (stdlib only: any Python >= 3.9 will do); builds on these
    buildlets see the same machine, so ``python`` is also what they find first on PATH.
    ``agent_arguments`` are added to each agent's command line (e.g. a preemption detector).
    """

    kind = "process"

    def __init__(
        self,
        root: str | Path,
        reactor: Any,
        python: str = sys.executable,
        start_timeout: float = 30.0,
        agent_arguments: Sequence[str] = (),
    ) -> None:
        self.root = Path(root)
        self._agent_arguments = list(agent_arguments)
        self._reactor = reactor
        self._python = python
        self._start_timeout = start_timeout

    async def start(
        self, name: str, secret: str, on_handle: Callable[[str], object]
    ) -> StartedBuildlet:
        """Spawn the agent in ``ROOT/NAME`` and wait for it to announce its URL."""
        home = self.root / name
        pid = await self._in_thread(self.thd_spawn, home, secret)
        handle = json.dumps({"dir": str(home), "pid": pid})
        await _maybe_await(on_handle(handle))
        ready_file = home / "url"
        deadline = self._reactor.seconds() + self._start_timeout
        while not ready_file.exists():
            # Not _is_agent: in the instant after the fork, before exec finishes, the child's
            # /proc cmdline is not yet the agent's, and it is our own unreaped child anyway.
            if _exited(pid):
                log_tail = _tail(home / "agent.log")
                await self.destroy(handle)
                raise ProviderError(f"the buildlet agent for {name} exited at start: {log_tail}")
            if self._reactor.seconds() > deadline:
                await self.destroy(handle)
                raise ProviderError(
                    f"the buildlet agent for {name} did not start within "
                    f"{self._start_timeout:g} s; its log: {_tail(home / 'agent.log')}"
                )
            await task.deferLater(self._reactor, 0.02, lambda: None)
        return StartedBuildlet(url=ready_file.read_text().strip(), handle=handle)

    def thd_spawn(self, home: Path, secret: str) -> int:
        """Create the buildlet's directory and start its agent (blocking); return the pid."""
        if home.exists():
            raise ProviderError(f"{home} already exists: another buildlet has that name")
        (home / "work").mkdir(parents=True)
        secret_file = home / "secret"
        secret_file.touch(mode=0o600)
        secret_file.write_text(secret)
        with open(home / "agent.log", "ab") as log_file:
            process = subprocess.Popen(
                [
                    self._python, str(AGENT_PATH),
                    "--listen", "127.0.0.1:0",
                    "--workdir", str(home / "work"),
                    "--secret-file", str(secret_file),
                    "--ready-file", str(home / "url"),
                    "--deadline", str(AGENT_START_DEADLINE), "--owned-path", str(home),
                    *self._agent_arguments,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        (home / "pid").write_text(str(process.pid))
        return process.pid

    async def destroy(self, handle: str) -> None:
        """Stop the agent's whole process group and remove its directory."""
        details = json.loads(handle)
        await self._in_thread(self.thd_destroy, Path(details["dir"]), int(details["pid"]))

    def thd_destroy(self, home: Path, pid: int) -> None:
        """Kill the agent (if it is still ours) and delete ``home`` (blocking)."""
        if _is_agent(pid, home):
            _kill_group(pid)
        shutil.rmtree(home, ignore_errors=True)

    async def reap(self, known_handles: set[str]) -> list[str]:
        """Destroy buildlet directories (and their agents) that no known handle names."""
        known_dirs = {json.loads(h)["dir"] for h in known_handles if h}
        return await self._in_thread(self.thd_reap, known_dirs)

    def thd_reap(self, known_dirs: set[str]) -> list[str]:
        """The blocking part of :meth:`reap`."""
        reaped: list[str] = []
        if not self.root.is_dir():
            return reaped
        for home in sorted(self.root.iterdir()):
            if str(home) in known_dirs or not home.is_dir():
                continue
            pid_text = (home / "pid").read_text().strip() if (home / "pid").exists() else ""
            self.thd_destroy(home, int(pid_text) if pid_text.isdigit() else -1)
            reaped.append(f"process buildlet {home.name} (pid {pid_text or 'unknown'})")
        return reaped

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return threads.deferToThreadPool(self._reactor, self._reactor.getThreadPool(), fn, *args)


def _is_agent(pid: int, home: Path) -> bool:
    """Whether ``pid`` is alive and is the agent serving ``home`` (not a recycled pid)."""
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = status.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and str(home / "work").encode() in cmdline


def _exited(pid: int) -> bool:
    """Whether process ``pid`` is gone or a zombie."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return status.rsplit(")", 1)[-1].split()[0] == "Z"


def _kill_group(pid: int) -> None:
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"


async def _maybe_await(value: object) -> None:
    if hasattr(value, "__await__"):
        await value
