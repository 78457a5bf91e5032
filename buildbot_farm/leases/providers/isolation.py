"""What keeps a process buildlet away from the master: its environment, its user, its sandbox.

Pure functions (no Twisted, no Buildbot) that the process provider uses to start an agent:

* :func:`buildlet_environment`: the whole environment an agent (and so every command a
  lessee runs) gets. Nothing of the master's own environment is passed on.
* :class:`BuildletUser`: the unprivileged user the agent becomes (``run_as=``).
* :func:`bwrap_command`: the bubblewrap command line in which the agent sees the system's
  programs and libraries read-only, its own directories read-write, and nothing of the
  master's files. It keeps the host's network: the coordinator must reach the agent's port.
* :func:`default_root`: where a pool's buildlets live when the pool does not say: outside
  the master's basedir, in a farm directory of the system's temporary directory.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildbot_farm.private_dirs import farm_temp_dir, is_inside

SANDBOXES = ("auto", "bwrap", "none")
# What a buildlet sees of /etc inside the sandbox: name lookups, TLS roots, the dynamic
# linker's cache, time zones, Debian's alternatives. Never the whole of /etc, where
# secrets directories (/etc/buildbot/secrets) often live.
ETC_ENTRIES = (
    "passwd", "group", "nsswitch.conf", "hosts", "host.conf", "resolv.conf", "gai.conf",
    "services", "protocols", "ssl", "ca-certificates", "ca-certificates.conf", "pki",
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone",
    "os-release", "debian_version", "mime.types", "shells", "login.defs", "python3",
    "python3.9", "python3.10", "python3.11", "python3.12", "python3.13",
)
# The top-level system directories: bound read-only, or re-created as the symlinks they are
# (Debian's merged /usr makes /bin, /lib ... links into /usr).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
LOCALE = "C.UTF-8"


@dataclass(frozen=True)
class BuildletUser:
    """The account an agent runs as: its name, ids and home (from the password database)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def named(cls, name: str) -> BuildletUser:
        """Look ``name`` up; ``LookupError`` saying how to create it when it does not exist."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise LookupError(
                f"there is no user {name!r} on this machine: create it with "
                f"`useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "
                f"{name}` (the demo and the test harness do, as root)"
            ) from None
        return cls(name, entry.pw_uid, entry.pw_gid)

    @classmethod
    def current(cls) -> BuildletUser:
        """The user this process runs as."""
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name, uid, os.getegid())

    def can_reach(self, path: Path) -> bool:
        """Whether this user could open ``path`` for reading (every parent searchable).

        Decided from the modes and owners alone, as the kernel would for a user without
        capabilities; ACLs are not read.
        """
        groups = {self.gid} | {g.gr_gid for g in grp.getgrall() if self.name in g.gr_mem}
        path = Path(os.path.abspath(path))
        for ancestor in reversed(path.parents):
            if not self._allowed(ancestor, groups, stat.S_IXUSR):
                return False
        return self._allowed(path, groups, stat.S_IRUSR)

    def _allowed(self, path: Path, groups: set[int], owner_bit: int) -> bool:
        try:
            info = path.stat()
        except OSError:
            return False
        if self.uid == 0:
            return True
        if info.st_uid == self.uid:
            return bool(info.st_mode & owner_bit)
        if info.st_gid in groups:
            return bool(info.st_mode & (owner_bit >> 3))
        return bool(info.st_mode & (owner_bit >> 6))


def buildlet_environment(home: Path, user: BuildletUser, python: str) -> dict[str, str]:
    """The agent's whole environment, which every exec starts from (plus the lessee's ``env``).

    ``PATH`` is the directory of ``python`` (so ``python3`` is the farm's Python, with
    buildbot-worker for FarmLatentWorker) then the system's; ``HOME`` and ``TMPDIR`` are
    the buildlet's own directories ``home/home`` and ``home/tmp``; ``USER``/``LOGNAME`` the
    user it runs as; ``LANG``/``LC_ALL`` ``C.UTF-8``; ``SHELL`` ``/bin/sh``.
    """
    return {
        "PATH": f"{os.path.dirname(os.path.abspath(python))}:{SYSTEM_PATH}",
        "HOME": str(home / "home"),
        "TMPDIR": str(home / "tmp"),
        "USER": user.name,
        "LOGNAME": user.name,
        "LANG": LOCALE,
        "LC_ALL": LOCALE,
        "SHELL": "/bin/sh",
    }


def bwrap_command(
    bwrap: str,
    home: Path,
    read_only: Iterable[str],
    as_root: bool,
    drops_to_user: bool,
    info_fd: int,
) -> list[str]:
    """The bubblewrap prefix that runs a command sandboxed for the buildlet in ``home``.

    The system directories, a few files of /etc, and ``read_only`` (the Python install, the
    agent file, the secret) are bound read-only at their own paths; ``home/work``,
    ``home/home`` and ``home/tmp`` read-write; /tmp and /var/tmp are private; /proc and /dev are the
    sandbox's own; PID, IPC and UTS namespaces are new, the command is their PID 1 (so that
    signals reach it: a shutdown hook's preemption signal, the provider's SIGTERM) in a
    session of its own, and bubblewrap writes its host PID to ``info_fd`` as JSON
    (``child-pid``). There is no ``--die-with-parent``:
    it ties the sandbox to the thread that started it, and agents must outlive both that
    thread and a killed coordinator (which re-adopts them); the provider ends a sandbox by
    killing its process group, and everything in its PID namespace dies with it.
    Run by root (``as_root``), it drops every capability but, when the agent will become
    its user itself (``drops_to_user``), the two that this takes.
    """
    argv = [
        bwrap, "--unshare-pid", "--as-pid-1", "--new-session", "--info-fd", str(info_fd),
        "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try", "--proc", "/proc", "--dev", "/dev",
        "--perms", "1777", "--tmpfs", "/tmp", "--perms", "0755", "--dir", "/var",
        "--perms", "1777", "--tmpfs", "/var/tmp", "--perms", "0755", "--dir", "/etc",
    ]
    for directory in SYSTEM_DIRS:
        if os.path.islink(directory):
            argv += ["--symlink", os.readlink(directory), directory]
        elif os.path.isdir(directory):
            argv += ["--ro-bind", directory, directory]
    for entry in ETC_ENTRIES:
        argv += ["--ro-bind-try", f"/etc/{entry}", f"/etc/{entry}"]
    read_only = _outermost(read_only)
    own = [str(home / name) for name in ("work", "home", "tmp")]
    # bwrap would make the directories leading to a bind private (0700): make them
    # searchable, as on the host, so that the user the agent becomes can reach the binds.
    made: set[str] = set()
    for path in (*read_only, *own):
        for parent in reversed(Path(path).parents):
            name = str(parent)
            if name not in made and name not in ("/", "/tmp", "/etc") and not any(
                is_inside(name, system) for system in SYSTEM_DIRS
            ):
                made.add(name)
                argv += ["--perms", "0755", "--dir", str(parent)]
    for path in read_only:
        argv += ["--ro-bind", path, path]
    for path in own:
        argv += ["--bind", path, path]
    if as_root:
        argv += ["--cap-drop", "ALL"]
        if drops_to_user:
            argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    # The agent starts in /: its work directory is the user's, closed to a root that holds
    # no capabilities; each command runs in the directory its exec names.
    return [*argv, "--chdir", "/", "--"]


def _outermost(paths: Iterable[str]) -> list[str]:
    """``paths`` without those inside another one, or inside a system directory."""
    chosen: list[str] = []
    for path in sorted({os.path.abspath(p) for p in paths}, key=len):
        if not any(is_inside(path, other) for other in (*chosen, *SYSTEM_DIRS)):
            chosen.append(path)
    return chosen


def exposing(binds: Sequence[str], protected: Sequence[Path]) -> list[str]:
    """The ``binds`` that would show a protected directory: it, or a directory around it.

    A bind inside a protected directory (a virtualenv in the master's basedir) shows only
    itself, and is allowed.
    """
    found = []
    for bind in binds:
        real = os.path.realpath(bind)
        for guarded in protected:
            if is_inside(os.path.realpath(guarded), real):
                found.append(f"{bind} (shows {guarded})")
    return found


def farm_buildlets_dir(state_dir: Path) -> Path:
    """The directory holding the default buildlet roots of the master in ``state_dir``.

    ``TMP/buildbot-farm-UID/DIGEST``: outside the master's basedir, so that a lessee
    standing in its work directory finds none of the master's files around it; in the
    system's temporary directory, which every user can create a directory in (a master not
    run as root has no ``/var/lib``) and which the machine empties at boot, when buildlet
    agents are gone anyway; one directory per master (DIGEST of its basedir's path), so
    masters on one machine never reap each other's buildlets.
    """
    digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:12]
    return farm_temp_dir() / digest


def default_root(state_dir: Path, pool: str) -> Path:
    """Where pool ``pool`` keeps its buildlets when it gives no ``buildlet_dir``."""
    return farm_buildlets_dir(state_dir) / pool
