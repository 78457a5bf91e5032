"""Becoming the buildbot-worker of a FarmLatentWorker: ``farm-remote.pyz bootstrap``.

Run on the buildlet (through :mod:`buildbot_farm.remote.handoff`) with the Python that has
buildbot-worker: creates the worker directory ``$WORKDIR/worker`` the first time (master,
name and password from ``FARM_MASTER``, ``FARM_WORKER_NAME``, ``FARM_WORKER_PASSWORD``),
adds the machine's architecture, Python version and host name to the worker info (Buildbot
reports none of them; build records want them), then becomes the worker, in the foreground,
so that the exec lasts as long as it does.
"""

from __future__ import annotations

import os
import platform
import socket
import sys


def worker_info() -> dict[str, str]:
    """The facts added to the worker's info directory, by file name."""
    return {"arch": platform.machine(), "python": platform.python_version(),
            "hostname": socket.gethostname()}


def write_info(base: str) -> None:
    """Write :func:`worker_info` into ``base/info``, one file per fact."""
    os.makedirs(os.path.join(base, "info"), exist_ok=True)
    for key, value in worker_info().items():
        with open(os.path.join(base, "info", key), "w") as info:
            info.write(value + "\n")


def main(argv: list[str]) -> int:
    """Create the worker if needed, then run it until it stops."""
    if argv:
        print("usage: farm-remote.pyz bootstrap (settings in FARM_* variables)", file=sys.stderr)
        return 2
    from buildbot_worker.scripts import runner  # only here: the worker's Python has it

    base = os.path.join(os.environ["WORKDIR"], "worker")
    if not os.path.exists(os.path.join(base, "buildbot.tac")):
        sys.argv = ["buildbot-worker", "create-worker", "--umask=0o22", base,
                    os.environ["FARM_MASTER"], os.environ["FARM_WORKER_NAME"],
                    os.environ["FARM_WORKER_PASSWORD"]]
        try:
            runner.run()
        except SystemExit as e:
            if e.code:
                raise
    write_info(base)
    sys.argv = ["buildbot-worker", "start", "--nodaemon", base]
    runner.run()
    return 0
