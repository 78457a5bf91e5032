"""Path safety, written once for both sides: relative paths that cannot climb out of the
directory they are meant for, single file names, symbolic links that stay inside.

The agent resolves every path a client names inside its work directory (:class:`Workdir`);
its archives, the container-task unpacker and the master's container and artifact code
check names with the same functions.
"""

from __future__ import annotations

import os
import posixpath

from buildbot_farm.remote.errors import AgentError


class UnsafePath(ValueError):
    """A path would leave the directory it is meant for; the message names it and says why."""


def relative_parts(path: str, what: str = "path") -> list[str]:
    """The components of the relative POSIX ``path`` (``""`` and ``.`` dropped).

    Raises UnsafePath (its message starting with ``what`` and the path) when ``path`` holds
    a NUL byte, is absolute, or has a ``..`` component.
    """
    if "\x00" in path:
        raise UnsafePath(f"{what} {path!r} contains a NUL byte")
    if path.startswith("/"):
        raise UnsafePath(f"{what} {path!r} is absolute")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(f"{what} {path!r} contains '..'")
    return parts


def safe_member_path(name: str) -> str:
    """Return ``name`` as a clean relative POSIX path, or raise UnsafePath saying why.

    Refuses what :func:`relative_parts` refuses, the empty name and backslashes (they mean
    something else on Windows workers).
    """
    if "\\" in name:
        raise UnsafePath(f"{name!r} contains a backslash")
    parts = relative_parts(name, "member")
    if not parts:
        raise UnsafePath(f"{name!r} names the destination itself")
    return "/".join(parts)


def check_segment(segment: str) -> str:
    """Return ``segment`` if it is one file name, else raise UnsafePath.

    Refuses ``""``, ``.`` and ``..``, slashes, backslashes, NUL and other control characters.
    """
    if segment in ("", ".", ".."):
        raise UnsafePath(f"path segment {segment!r} is not allowed")
    for bad in ("/", "\\", "\x00"):
        if bad in segment:
            raise UnsafePath(f"path segment {segment!r} contains {bad!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in segment):
        raise UnsafePath(f"path segment {segment!r} contains a control character")
    return segment


def link_stays_inside(member: str, target: str) -> bool:
    """Tell whether symbolic link ``member`` (relative to the destination) points inside it."""
    if not target or target.startswith("/") or "\x00" in target:
        return False
    depth = len(posixpath.dirname(member).split("/")) if posixpath.dirname(member) else 0
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            depth += 1
    return True


def within(root: str, path: str) -> bool:
    """Tell whether the absolute path is root or lies under it."""
    return os.path.commonpath([root, path]) == root


class Workdir:
    """The directory the agent serves; every path a client names is resolved inside it."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def resolve(self, rel: str, follow_last: bool = True) -> str:
        """Return the absolute path for rel; 400 if it is absolute or leads outside the workdir.

        With follow_last false a symlink at the last component is returned as itself, which is
        what removing or replacing an entry needs.
        """
        try:
            parts = relative_parts(rel)
        except UnsafePath as exc:
            raise AgentError(400, f"{exc}; give a path relative to the workdir, inside it") \
                from None
        if not parts:
            return self.root
        if follow_last:
            path = os.path.realpath(os.path.join(self.root, *parts))
        else:
            path = os.path.join(os.path.realpath(os.path.join(self.root, *parts[:-1])), parts[-1])
        if not within(self.root, path):
            raise AgentError(400, f"path {rel!r} leads outside the workdir through a symlink")
        return path


def existing(path: str, rel: str) -> os.stat_result:
    """Stat path (following links); 404 naming rel if there is nothing there."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise AgentError(404, f"{rel!r} does not exist in the workdir") from None
