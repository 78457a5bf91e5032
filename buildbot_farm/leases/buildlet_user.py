"""The unprivileged user process buildlets run as: ``farm-buildlet``, made when root asks.

``make demo``, ``buildbot-farm demo`` and the test harness call :func:`ensure_buildlet_user`;
an admin runs the same ``useradd`` once (docs/leases.md).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

BUILDLET_USER = "farm-buildlet"


def ensure_buildlet_user(name: str = BUILDLET_USER) -> str | None:
    """Make sure the system user ``name`` exists; return its name, or None when it cannot.

    Idempotent. Only root can add users: run by anyone else, it returns ``name`` if the
    user is already there and None otherwise (buildlets then run as the master's user).
    The user has its own group, no home directory, no login shell and no password.
    """
    try:
        pwd.getpwnam(name)
        return name
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    if os.geteuid() != 0 or not os.path.exists(useradd):
        return None
    done = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True, check=False,
    )
    # Exit 9: a concurrent caller made it first (the test workers start together).
    if done.returncode not in (0, 9):
        raise OSError(f"useradd {name} failed ({done.returncode}): {done.stderr.strip()}")
    return name
