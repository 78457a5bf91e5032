"""The artifact index in memory: what a GET needs of a stored file, without a database trip.

The repository loads it from the index at start and keeps it in step with what it writes
(uploads, imports, files hashed on a first GET) and deletes; a GET of a file it knows is
answered on the reactor with no thread-pool or database trip (see :mod:`.local_files`).
A file changed behind the repository's back (by nginx, another master, a person) is
caught by its identity: the first GET served from memory pins the file's inode,
modification time and size, and a file that no longer matches them goes the slow way (stat, index,
hash if needed), which puts the fresh digest here.

Memory: about 500 bytes a file with its path (100,000 files: about 50 MiB).
"""

from __future__ import annotations


class KnownFile:
    """A stored file's size and sha256 as indexed; ``identity`` (inode, modification time
    in ns, size) once a GET has seen the file on disk."""

    __slots__ = ("identity", "sha256", "size")

    def __init__(self, size: int, sha256: str) -> None:
        self.size = size
        self.sha256 = sha256
        self.identity: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        return f"KnownFile(size={self.size}, sha256={self.sha256!r}, identity={self.identity})"


class KnownFiles:
    """Repository path (``a/b/c``) -> :class:`KnownFile`; only the reactor thread uses it."""

    def __init__(self) -> None:
        self._files: dict[str, KnownFile] = {}

    def __len__(self) -> int:
        return len(self._files)

    def get(self, path: str) -> KnownFile | None:
        """What is known of ``path``; None when nothing is."""
        return self._files.get(path)

    def put(self, path: str, size: int, sha256: str) -> None:
        """``path`` was (re)indexed with this size and digest."""
        self._files[path] = KnownFile(size, sha256)

    def drop(self, path: str) -> None:
        """Forget ``path`` alone (it changed on disk, or was not there)."""
        self._files.pop(path, None)

    def forget(self, path: str) -> None:
        """Forget ``path`` and everything below it (a deleted file or collection)."""
        self._files.pop(path, None)
        below = path + "/"
        for name in [name for name in self._files if name.startswith(below)]:
            del self._files[name]

    def clear(self) -> None:
        """Know nothing (before loading the index)."""
        self._files = {}
