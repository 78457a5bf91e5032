"""The farm's own directory in the system's temporary directory, and what lives there.

``TMP/buildbot-farm-UID`` holds, per user, the default buildlet roots of each master
(:mod:`buildbot_farm.leases.providers.isolation`) and the ``farm-remote.pyz`` archive that
process buildlets run and that is copied into containers and onto hosts
(:func:`remote_archive`). Every user can create a directory there, so each level the farm
uses is checked to be this user's (:func:`make_private_dir`).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from buildbot_farm.remote.pyz import build_archive

__all__ = ["farm_temp_dir", "is_inside", "make_private_dir", "remote_archive"]


def farm_temp_dir() -> Path:
    """``TMP/buildbot-farm-UID``: this user's farm directory in the temporary directory."""
    return Path(tempfile.gettempdir()) / f"buildbot-farm-{os.geteuid()}"


def remote_archive() -> Path:
    """This package's farm-remote.pyz, built at first use into ``TMP/buildbot-farm-UID/remote``.

    A private directory of this user (as the buildlets' roots are) that every user can
    search, so that an agent which becomes its ``run_as`` user still reads the archive.
    """
    directory = farm_temp_dir() / "remote"
    make_private_dir(directory)
    return build_archive(directory)


def make_private_dir(path: Path, mode: int = 0o711) -> None:
    """Create ``path`` with ``mode``; in the farm's directory of the temporary directory,
    check that every level of it is a directory of this user (then given ``mode`` too).

    The default buildlet roots live in the shared temporary directory, where another user
    could have made ``buildbot-farm-UID`` first, or put a symlink: that is refused, never used.
    """
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    # The temporary directory resolved, not the farm directory: a symlink there is refused.
    farm = Path(tempfile.gettempdir()).resolve() / farm_temp_dir().name
    levels = [path, *(p for p in path.parents if is_inside(str(p), str(farm)))]
    for level in levels:
        info = os.lstat(level)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise PermissionError(
                f"{level} is not a directory of this user (uid {os.geteuid()}): another user "
                f"made it; remove it, or give the pool buildlet_dir= elsewhere"
            )
        if stat.S_IMODE(info.st_mode) != mode:  # a umask (twistd's 077) made it otherwise
            os.chmod(level, mode)


def is_inside(path: str, directory: str) -> bool:
    """Whether the absolute ``path`` is ``directory`` or below it (as written, not resolved)."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")
