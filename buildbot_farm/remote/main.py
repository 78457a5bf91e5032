"""``python3 farm-remote.pyz COMMAND ARGS...``: the programs the farm runs on remote hosts.

* ``agent``: the buildlet agent (:mod:`buildbot_farm.remote.agent`);
* ``prestart SOCKET AGENT_PID``: the agent's pre-started worker (:mod:`~.prestart`);
* ``handoff SCRIPT [ARGS...]``: run a program in the pre-started worker, or here (:mod:`~.handoff`);
* ``worker``: ``handoff`` this archive's ``bootstrap``, as FarmLatentWorker does;
* ``bootstrap``: become a FarmLatentWorker's buildbot-worker (:mod:`~.bootstrap`);
* ``unpack ARCHIVE MANIFEST DEST``: apply a container task's changes (:mod:`~.unpack`);
* ``container-task SPEC RESULT``: a container task on this host's engine (:mod:`~.container_task`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from buildbot_farm.remote.environment import REMOTE_ENV


def own_archive() -> str | None:
    """The path of the farm-remote.pyz this code was imported from, or None (a plain package)."""
    archive = getattr(sys.modules[__name__].__loader__, "archive", None)
    return None if archive is None else str(archive)


def _agent(argv: list[str]) -> int:
    from buildbot_farm.remote import agent

    return agent.main(argv)


def _prestart(argv: list[str]) -> int:
    from buildbot_farm.remote import prestart

    return prestart.main(argv)


def _handoff(argv: list[str]) -> int:
    from buildbot_farm.remote import handoff

    return handoff.main(argv)


def _worker(argv: list[str]) -> int:
    from buildbot_farm.remote import handoff

    archive = own_archive()
    if argv or archive is None:
        print("usage: python3 farm-remote.pyz worker (run from the archive)", file=sys.stderr)
        return 2
    return handoff.run([archive, "bootstrap"])


def _bootstrap(argv: list[str]) -> int:
    from buildbot_farm.remote import bootstrap

    return bootstrap.main(argv)


def _unpack(argv: list[str]) -> int:
    from buildbot_farm.remote import unpack

    return unpack.main(argv)


def _container_task(argv: list[str]) -> int:
    from buildbot_farm.remote import container_task

    return container_task.main(argv)


# Each command imports only its own modules: a hand-off starts in a few milliseconds.
COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "agent": _agent,
    "prestart": _prestart,
    "handoff": _handoff,
    "worker": _worker,
    "bootstrap": _bootstrap,
    "unpack": _unpack,
    "container-task": _container_task,
}


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv[0]`` with the rest of ``argv`` (default: the command line)."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        given = repr(args[0]) if args else "no command"
        print(f"farm-remote: {given} is not a command; give one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    archive = own_archive()
    if archive is not None and args[0] == "agent":
        os.environ[REMOTE_ENV] = archive  # every exec can run this archive (RUN_REMOTE)
    return COMMANDS[args[0]](args[1:])
