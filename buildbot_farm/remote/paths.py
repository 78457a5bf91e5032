"""Paths inside the work directory: every path a client names is resolved in it, or refused."""

from __future__ import annotations

import os

from buildbot_farm.remote.errors import AgentError


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
        if "\0" in rel:
            raise AgentError(400, f"path {rel!r} contains a NUL byte")
        if rel.startswith("/"):
            raise AgentError(400, f"path {rel!r} is absolute; give a path relative to the workdir")
        parts = [part for part in rel.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise AgentError(400, f"path {rel!r} contains '..'; give a path inside the workdir")
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

