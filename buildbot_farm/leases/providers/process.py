"""The ``process`` provider: each buildlet is the agent as a local process (the embedded default).

Every buildlet gets a directory ``ROOT/NAME`` holding its work directory, its secret, its
agent's log and pid. Agents run in sessions of their own, so they outlive a coordinator
that is killed; the directory is what a restarted coordinator uses to find them again.

Isolation (see ``isolation``): an agent gets a small environment of its own, never the
master's; it becomes the pool's ``run_as`` user when the master runs as root; and, where
bubblewrap is installed, it runs in a sandbox that shows none of the master's files.
ROOT must lie outside the master's basedir (``protected``), which is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from twisted.internet import task
from twisted.python import log

from buildbot_farm.leases.providers.agent_processes import (
    is_agent,
    kill_group,
    log_tail,
    maybe_await,
    remove_after_deadline,
    sandbox_problem,
    sandboxed_pid,
    thd_start_state,
)
from buildbot_farm.leases.providers.base import (
    AGENT_START_DEADLINE,
    BuildletProvider,
    ProviderError,
    StartedBuildlet,
)
from buildbot_farm.leases.providers.isolation import (
    SANDBOXES,
    SYSTEM_DIRS,
    BuildletUser,
    buildlet_environment,
    bwrap_command,
    exposing,
)
from buildbot_farm.private_dirs import make_private_dir, remote_archive
from buildbot_farm.thread_pool import in_thread

PYTHON_PREFIXES = (
    "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix,"
    " sys.base_exec_prefix]))"
)


@dataclass(frozen=True)
class Isolation:
    """How this provider's agents are started: as whom, and in which sandbox (if any).

    ``bwrap`` is the bubblewrap program, or None for no sandbox; ``read_only`` what the
    sandbox shows of the machine besides the system (the Python install, the agent file).
    """

    user: BuildletUser
    drops_privileges: bool
    bwrap: str | None
    read_only: tuple[str, ...]


class ProcessProvider(BuildletProvider):
    """Runs buildlet agents as processes of this machine under ``root``.

    ``python`` runs the agent (stdlib only: any Python >= 3.9 will do); builds on these
    buildlets see the same machine, so ``python`` is also what they find first on PATH.
    ``agent_arguments`` are added to each agent's command line (e.g. a preemption detector).
    ``run_as`` names the unprivileged user agents become (the master must run as root);
    None keeps the master's own user. ``sandbox`` is ``"bwrap"`` (bubblewrap, required),
    ``"auto"`` (bubblewrap when it is installed and works) or ``"none"``. ``protected``
    are the master's directories (its basedir): ``root`` may not lie in them, no sandbox
    may show them, and without a sandbox ``run_as`` may not be able to read them.
    """

    kind = "process"

    def __init__(
        self,
        root: str | Path,
        reactor: Any,
        python: str = sys.executable,
        start_timeout: float = 30.0,
        agent_arguments: Sequence[str] = (),
        run_as: str | None = None,
        sandbox: str = "auto",
        protected: Sequence[str | Path] = (),
    ) -> None:
        if sandbox not in SANDBOXES:
            raise ValueError(
                f"process provider: sandbox must be one of {SANDBOXES}, not {sandbox!r}"
            )
        self.root = Path(root)
        self._agent_arguments = list(agent_arguments)
        self._reactor = reactor
        self._python = python
        self._start_timeout = start_timeout
        self._run_as = run_as
        self._sandbox = sandbox
        self._protected = [Path(p) for p in protected]
        self._isolation: Isolation | None = None

    async def start(
        self, name: str, secret: str, on_handle: Callable[[str], object]
    ) -> StartedBuildlet:
        """Spawn the agent in ``ROOT/NAME`` and wait for it to announce its URL."""
        home = self.root / name
        pid = await in_thread(self._reactor, self.thd_spawn, home, secret)
        handle = json.dumps({"dir": str(home), "pid": pid})
        await maybe_await(on_handle(handle))
        deadline = self._reactor.seconds() + self._start_timeout
        while True:
            # The agent's log and /proc are read in a thread: every 20 ms for up to
            # start_timeout, on the reactor they would stall every other request.
            url, exit_log = await in_thread(self._reactor, thd_start_state, home, pid)
            if url is not None:
                return StartedBuildlet(url=url, handle=handle)
            if exit_log is not None:
                await self.destroy(handle)
                raise ProviderError(f"the buildlet agent for {name} exited at start: {exit_log}")
            if self._reactor.seconds() > deadline:
                last_lines = await in_thread(self._reactor, log_tail, home / "agent.log")
                await self.destroy(handle)
                raise ProviderError(
                    f"the buildlet agent for {name} did not start within "
                    f"{self._start_timeout:g} s; its log: {last_lines}"
                )
            await task.deferLater(self._reactor, 0.02, lambda: None)

    def thd_spawn(self, home: Path, secret: str) -> int:
        """Create the buildlet's directory and start its agent (blocking); return the pid.

        ``home`` (the master's, mode 0711) holds the secret and the agent's log (0600);
        ``work``, ``home`` and ``tmp`` in it (0700) belong to the user the agent runs as.
        """
        isolation = self.thd_isolation()
        if home.exists():
            raise ProviderError(f"{home} already exists: another buildlet has that name")
        try:
            make_private_dir(home.parent)
        except PermissionError as e:
            raise ProviderError(str(e)) from None
        home.mkdir(mode=0o711)
        home.chmod(0o711)
        user = isolation.user
        for name in ("work", "home", "tmp"):
            (home / name).mkdir(mode=0o700)
            if user.uid != os.geteuid():
                os.chown(home / name, user.uid, user.gid)
        secret_file = home / "secret"
        secret_fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(secret_fd, "w") as out:
            out.write(secret)
        argv = [
            self._python, str(remote_archive()), "agent",
            "--listen", "127.0.0.1:0",
            "--workdir", str(home / "work"),
            "--secret-file", str(secret_file),
            "--deadline", str(AGENT_START_DEADLINE), "--owned-path", str(home),
            *self._agent_arguments,
        ]
        if isolation.drops_privileges:
            argv += ["--run-as", user.name]
        info_read, info_write = os.pipe() if isolation.bwrap is not None else (-1, -1)
        if isolation.bwrap is not None:
            argv = bwrap_command(
                isolation.bwrap, home, (*isolation.read_only, str(secret_file)),
                as_root=os.geteuid() == 0, drops_to_user=isolation.drops_privileges,
                info_fd=info_write,
            ) + argv
            # Inside the sandbox the agent cannot remove its own directory (it sees only the
            # binds): a shell outside does, once the agent halted at its lease deadline.
            argv = ["/bin/bash", "-c", remove_after_deadline(info_write), str(home), *argv]
        log_fd = os.open(home / "agent.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            with os.fdopen(log_fd, "ab") as log_file:
                process = subprocess.Popen(
                    argv,
                    env=buildlet_environment(home, user, self._python),
                    cwd=home / "work",
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=(info_write,) if info_write >= 0 else (),
                )
        finally:
            if info_write >= 0:
                os.close(info_write)
        pid = process.pid
        if info_read >= 0:
            pid = sandboxed_pid(info_read, pid, time.monotonic() + self._start_timeout)
        (home / "pid").write_text(str(pid))
        return pid

    def thd_isolation(self) -> Isolation:
        """Decide (once) as whom and in what sandbox agents run; ProviderError if they cannot."""
        if self._isolation is not None:
            return self._isolation
        for guarded in self._protected:
            if exposing([str(self.root)], [guarded]) or exposing([str(guarded)], [self.root]):
                raise ProviderError(
                    f"the buildlets' directory {self.root} is inside or around the master's "
                    f"{guarded}: give the pool a buildlet_dir= elsewhere"
                )
        user = self._user()
        bwrap, read_only = self._sandbox_program()
        drops = user.uid != os.geteuid()
        if bwrap is None and drops:
            readable = [str(p) for p in self._protected if user.can_reach(p)]
            if readable:
                raise ProviderError(
                    f"the buildlet user {user.name} can read the master's {', '.join(readable)}:"
                    f" make it private (chmod 700), or install bubblewrap (sandbox='bwrap')"
                )
        if bwrap is None and not drops:
            log.msg(
                f"process provider {self.root}: agents run as the master's own user "
                f"({user.name}) with no sandbox: what they run can read the master's files; "
                f"install bubblewrap, or give the pool run_as= (with the master as root)"
            )
        self._isolation = Isolation(user, drops, bwrap, read_only)
        return self._isolation

    def _user(self) -> BuildletUser:
        if self._run_as is None:
            return BuildletUser.current()
        try:
            user = BuildletUser.named(self._run_as)
        except LookupError as e:
            raise ProviderError(f"run_as: {e}") from None
        if user.uid != os.geteuid() and os.geteuid() != 0:
            raise ProviderError(
                f"run_as={self._run_as!r} needs the master to run as root (it runs as uid "
                f"{os.geteuid()}): start it as root, or drop run_as"
            )
        if user.uid == 0:
            raise ProviderError("run_as names root: give an unprivileged user")
        return user

    def _sandbox_program(self) -> tuple[str | None, tuple[str, ...]]:
        """The bubblewrap program to use (None for none) and what it binds read-only."""
        if self._sandbox == "none":
            return None, ()
        bwrap = shutil.which("bwrap")
        problem = "bubblewrap (bwrap) is not installed" if bwrap is None else ""
        read_only: tuple[str, ...] = ()
        if bwrap is not None:
            read_only = (*self._python_dirs(), str(remote_archive()))
            shown = exposing([*read_only, *SYSTEM_DIRS], self._protected)
            if shown:
                raise ProviderError(
                    f"the sandbox would show the master's files through {', '.join(shown)}: "
                    f"run the farm from a Python outside the master's basedir"
                )
            problem = sandbox_problem(bwrap)
        if not problem:
            return bwrap, read_only
        if self._sandbox == "bwrap":
            raise ProviderError(f"sandbox='bwrap': {problem}; install Debian's bubblewrap")
        log.msg(f"process provider {self.root}: no sandbox ({problem})")
        return None, ()

    def _python_dirs(self) -> list[str]:
        """The installation directories of ``python`` (a virtualenv and the Python under it)."""
        done = subprocess.run(
            [self._python, "-c", PYTHON_PREFIXES],
            capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin"},
        )
        if done.returncode != 0:
            raise ProviderError(f"cannot run {self._python}: {done.stderr.strip()[-300:]}")
        return [*json.loads(done.stdout), os.path.dirname(os.path.realpath(self._python))]

    async def destroy(self, handle: str) -> None:
        """Stop the agent's whole process group and remove its directory."""
        details = json.loads(handle)
        await in_thread(self._reactor, self.thd_destroy, Path(details["dir"]), int(details["pid"]))

    def thd_destroy(self, home: Path, pid: int) -> None:
        """Kill the agent (if it is still ours) and delete ``home`` (blocking)."""
        if is_agent(pid, home):
            kill_group(pid)
        shutil.rmtree(home, ignore_errors=True)

    async def reap(self, known_handles: set[str]) -> list[str]:
        """Destroy buildlet directories (and their agents) that no known handle names."""
        known_dirs = {json.loads(h)["dir"] for h in known_handles if h}
        return await in_thread(self._reactor, self.thd_reap, known_dirs)

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

