"""The operating-system side of the ``process`` provider: agent processes and their files.

Whether a pid is still the buildlet's agent, what its log says about its start, killing
its process group, the bubblewrap probe and the shell wrapper that removes a sandboxed
buildlet's directory after its deadline. Blocking calls are named ``thd_*`` or are run by
the provider on the thread pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from buildbot_farm.remote.protocol import DEADLINE_EXIT, READY_PREFIX

READY_LINE = f"{READY_PREFIX} "


def sandbox_problem(bwrap: str) -> str:
    """Why ``bwrap`` cannot make a sandbox here (empty when it can)."""
    done = subprocess.run(
        [bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--die-with-parent", "true"],
        capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin"},
    )
    return "" if done.returncode == 0 else f"{bwrap} fails here: {done.stderr.strip()[-300:]}"


def remove_after_deadline(info_fd: int) -> str:
    """A shell script that runs ``"$@"`` (the sandboxed agent) and removes the buildlet's
    directory ``$0`` when the agent exits with DEADLINE_EXIT (it halted because no
    coordinator renewed its lease). The shell closes its own copy of bubblewrap's info
    descriptor, so that the reader of that pipe sees its end: bash, as dash takes only
    descriptors 0-9 in a redirection."""
    return (
        f'"$@" & agent=$!; exec {info_fd}>&-; wait "$agent"; code=$?; '
        f'if [ "$code" -eq {DEADLINE_EXIT} ]; then rm -rf -- "$0"; fi; exit "$code"'
    )


def sandboxed_pid(info_fd: int, bwrap_pid: int, deadline: float) -> int:
    """The host PID of the agent in bubblewrap, once it leads its own process group.

    The agent is what must be signalled (SIGTERM to destroy it, a preemption signal), and
    its group is what is killed. Falls back to bubblewrap's own PID when it says nothing
    (it failed; the caller finds it gone and reports its log).
    """
    with os.fdopen(info_fd, "rb") as info:
        data = info.read()
    try:
        pid = int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return bwrap_pid
    # bubblewrap reports the PID before the sandboxed process calls setsid() and execs;
    # wait for both, so that the agent is what the PID shows from now on.
    while time.monotonic() < deadline:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if os.getpgid(pid) == pid and cmdline[0] and b"--info-fd" not in cmdline:
                return pid
        except OSError:
            return pid
        time.sleep(0.002)
    return pid


def thd_start_state(home: Path, pid: int) -> tuple[str | None, str | None]:
    """The starting agent's URL once it announced it, else the tail of its log once it
    exited (blocking reads of its log and /proc)."""
    url = ready_url(home / "agent.log")
    # Not is_agent: in the instant after the fork, before exec finishes, the child's
    # /proc cmdline is not yet the agent's.
    if url is None and has_exited(pid):
        return None, log_tail(home / "agent.log")
    return url, None


def ready_url(log_path: Path) -> str | None:
    """The URL of the agent's ``BUILDLET-READY`` line in its log, once it has printed it."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.split("\n")[:-1]:  # whole lines only: the last may be half-written
        if line.startswith(READY_LINE):
            return line[len(READY_LINE):].strip()
    return None


def is_agent(pid: int, home: Path) -> bool:
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


def has_exited(pid: int) -> bool:
    """Whether process ``pid`` is gone or a zombie."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return status.rsplit(")", 1)[-1].split()[0] == "Z"


def kill_group(pid: int) -> None:
    """SIGTERM the process group ``pid`` leads, then SIGKILL what is left of it."""
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


def log_tail(path: Path, lines: int = 10) -> str:
    """The last ``lines`` lines of the log at ``path``, on one line (for error messages)."""
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"


async def maybe_await(value: object) -> None:
    """Await ``value`` if it is awaitable (a callback that may or may not be async)."""
    if hasattr(value, "__await__"):
        await value
