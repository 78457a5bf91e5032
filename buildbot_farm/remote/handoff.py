"""Handing a program to the buildlet's pre-started worker, or running it here when there is none.

``farm-remote.pyz handoff SCRIPT [ARGS...]`` (and ``worker``, which hands off this archive's
``bootstrap``) connects to the unix socket named by ``FARM_PRESTARTED_WORKER``, sends its
environment, directory and ``argv`` (:mod:`buildbot_farm.remote.prestart` runs it), then relays
the program's output until it ends. With no pre-started process, or one that is gone or
refuses, it says why on a ``farm-worker:`` line and runs the program itself. Killing the exec
ends the program either way: the pre-started process kills itself once its client hangs up.
"""

from __future__ import annotations

import json
import os
import socket
import sys

from buildbot_farm.remote.environment import PRESTART_SOCKET_ENV

# The marker of the lines the exec prints about how the worker was started.
LOG_PREFIX = "farm-worker:"
USED_MESSAGE = f"{LOG_PREFIX} using the pre-started worker"


def hand_off(argv: list[str]) -> tuple[socket.socket | None, str]:
    """Give ``argv`` to the pre-started worker: its connection, or None and why not."""
    path = os.environ.get(PRESTART_SOCKET_ENV)
    if not path:
        return None, "this buildlet has none"
    conn = socket.socket(socket.AF_UNIX)
    try:
        conn.connect(path)
        request = {"env": dict(os.environ), "cwd": os.getcwd(), "argv": argv}
        conn.sendall(json.dumps(request).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            data = conn.recv(1)
            if not data:
                break
            answer += data
    except OSError as exc:
        conn.close()
        return None, f"cannot reach it at {path}: {exc}"
    if answer != b"OK\n":
        conn.close()
        return None, f"it answered {answer.decode(errors='replace').strip() or 'nothing'}"
    return conn, ""


def run(argv: list[str]) -> int:
    """Run ``argv`` (a script or a .pyz and its arguments) in the pre-started worker, or here."""
    conn, why = hand_off(argv)
    if conn is None:
        print(f"{LOG_PREFIX} no pre-started worker ({why}); starting one", flush=True)
        import runpy  # only here: a hand-off to the pre-started worker never needs it

        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")
        return 0
    print(USED_MESSAGE, flush=True)
    with conn:
        while True:
            data = conn.recv(65536)
            if not data:
                return 0
            os.write(1, data)


def main(argv: list[str]) -> int:
    """``handoff SCRIPT [ARGS...]``."""
    if not argv:
        print("usage: farm-remote.pyz handoff SCRIPT [ARGS...]", file=sys.stderr)
        return 2
    return run(argv)
