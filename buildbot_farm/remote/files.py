"""Files in the work directory: listing entries (JSON or Go's lines), removing, writing."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import stat
import tempfile
import time
from functools import partial

from buildbot_farm.remote.bodies import CHUNK


def describe_entry(path: str, name: str, digest: bool) -> dict[str, object]:
    """Describe one directory entry for /ls (links are not followed)."""
    info = os.lstat(path)
    entry: dict[str, object] = {
        "name": name,
        "size": info.st_size,
        "mode": f"{stat.S_IMODE(info.st_mode):04o}",
        "mtime": info.st_mtime,
        "is_dir": stat.S_ISDIR(info.st_mode),
    }
    if stat.S_ISLNK(info.st_mode):
        entry["link"] = os.readlink(path)
    elif digest and stat.S_ISREG(info.st_mode):
        sha = hashlib.sha256()
        with open(path, "rb") as source:
            for block in iter(partial(source.read, CHUNK), b""):
                sha.update(block)
        entry["sha256"] = sha.hexdigest()
    return entry


def go_mode_string(mode: int) -> str:
    """An lstat mode written as Go's ``os.FileMode.String`` writes it, e.g. ``drwxr-xr-x``.

    Go puts a letter per type or special bit (``d`` dir, ``L`` link, ``D`` device, ``p`` pipe,
    ``S`` socket, ``u`` setuid, ``g`` setgid, ``c`` character device, ``t`` sticky, in that
    order; ``-`` for none) before the nine permission letters.
    """
    letters = [(stat.S_ISDIR(mode), "d"), (stat.S_ISLNK(mode), "L"),
               (stat.S_ISBLK(mode) or stat.S_ISCHR(mode), "D"), (stat.S_ISFIFO(mode), "p"),
               (stat.S_ISSOCK(mode), "S"), (bool(mode & stat.S_ISUID), "u"),
               (bool(mode & stat.S_ISGID), "g"), (stat.S_ISCHR(mode), "c"),
               (bool(mode & stat.S_ISVTX), "t")]
    kinds = "".join(letter for present, letter in letters if present) or "-"
    return kinds + "".join(letter if mode & (0o400 >> i) else "-"
                           for i, letter in enumerate("rwxrwxrwx"))


def go_ls_line(path: str, name: str, digest: bool) -> bytes:
    """One line of /ls in Go's format (links are not followed).

    Mode, tab, name (``/`` after a directory's); for a regular file also tab, size, tab,
    modification time (RFC 3339, UTC, whole seconds) and with digest tab, SHA-1.
    """
    info = os.lstat(path)
    line = f"{go_mode_string(info.st_mode)}\t{name}"
    if stat.S_ISREG(info.st_mode):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.st_mtime_ns // 10**9))
        line += f"\t{info.st_size}\t{when}"
        if digest:
            sha = hashlib.sha1()  # Go's protocol names SHA-1 (a digest, not a signature)
            with open(path, "rb") as source:
                for block in iter(partial(source.read, CHUNK), b""):
                    sha.update(block)
            line += f"\t{sha.hexdigest()}"
    elif stat.S_ISDIR(info.st_mode):
        line += "/"
    return (line + "\n").encode("utf-8", "surrogateescape")


def remove_path(path: str) -> bool:
    """Remove a file, link or tree; return whether there was anything to remove."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(mode):
        os.unlink(path)
        return True
    for dirpath, _, _ in os.walk(path):  # read-only dirs, like Go's module cache, block rmtree
        with contextlib.suppress(OSError):
            os.chmod(dirpath, stat.S_IMODE(os.lstat(dirpath).st_mode) | stat.S_IRWXU)
    shutil.rmtree(path)
    return True


def remove_path_or_entries(path: str, keep: bool) -> bool:
    """Remove path, or with keep only what is in it; return whether anything was removed."""
    if not keep:
        return remove_path(path)
    return any([remove_path(os.path.join(path, name)) for name in os.listdir(path)])


def write_atomically(source: io.BufferedIOBase, dest: str, mode: int) -> int:
    """Stream source into dest through a temporary file and a rename; return the size."""
    fd, temp = tempfile.mkstemp(prefix=".buildlet-write-", dir=os.path.dirname(dest))
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK)
            size = out.tell()
        os.chmod(temp, mode)
        os.replace(temp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return size

