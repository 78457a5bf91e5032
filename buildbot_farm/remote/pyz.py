"""Building ``farm-remote.pyz``, the one file the master copies to where the remote side runs.

Master side only (it is not in the archive). The archive holds this package's other modules
and runs :func:`buildbot_farm.remote.main.main`; it is built with :mod:`zipapp` at first use,
named after the digest of what it holds, so that a changed package gets a new archive and a
built one is never rebuilt. Each module's bytecode for the master's Python goes beside it.

Building a new archive removes the stale ones beside it (:func:`stale_archives`): those no
running process names and nobody asked for in the last :data:`STALE_AFTER` seconds. Masters
of other versions may share the directory, so an archive some master still hands out, or
a process agent still runs from, stays.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import py_compile
import re
import shutil
import tempfile
import time
import zipapp
from collections.abc import Collection
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ARCHIVE_NAME = "farm-remote.pyz"
# What the archive leaves out: the builder itself, which only the master runs.
MASTER_ONLY = frozenset({"pyz.py"})
ROOT_MAIN = b"import sys\nfrom buildbot_farm.remote.main import main\nsys.exit(main())\n"
ROOT_PACKAGE = b'"""The remote side of buildbot_farm only (see buildbot_farm.remote)."""\n'
ARCHIVE_PATTERN = re.compile(r"^farm-remote-[0-9a-f]{16}\.pyz$")
# An archive unused this long (no master built or asked for it; its access time is its last
# use) and named by no running process is stale.
STALE_AFTER = 24 * 3600


def sources() -> dict[str, bytes]:
    """The archive's files: path inside it, contents."""
    found = {"__main__.py": ROOT_MAIN, "buildbot_farm/__init__.py": ROOT_PACKAGE}
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name not in MASTER_ONLY:
            found[f"buildbot_farm/remote/{path.name}"] = path.read_bytes()
    return found


def compile_beside(source: Path) -> None:
    """Write ``source``'s bytecode beside it (``NAME.pyc``, where zipimport looks first).

    Unchecked-hash bytecode of this Python: a host with the same version skips compiling
    each module at every start; any other finds the magic number differs and compiles the
    source beside it, as without.
    """
    py_compile.compile(str(source), cfile=str(source.with_suffix(".pyc")), doraise=True,
                       dfile=source.name,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def digest(files: dict[str, bytes]) -> str:
    """A short digest of the archive's files, names and contents, and of the bytecode's
    Python version."""
    sha = hashlib.sha256(importlib.util.MAGIC_NUMBER)
    for name in sorted(files):
        sha.update(f"{name}\0{len(files[name])}\0".encode() + files[name])
    return sha.hexdigest()[:16]


def build_archive(directory: Path) -> Path:
    """The path of the archive in ``directory``, built there (readable by all) if absent."""
    files = sources()
    target = directory / f"farm-remote-{digest(files)}.pyz"
    if target.exists():
        used_now(target)
        return target
    staging = Path(tempfile.mkdtemp(prefix=".farm-remote-", dir=directory))
    try:
        tree = staging / "tree"
        for name, data in files.items():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_bytes(data)
            if name.startswith("buildbot_farm/"):
                compile_beside(tree / name)
        built = staging / ARCHIVE_NAME
        zipapp.create_archive(tree, built, interpreter="/usr/bin/env python3", compressed=True)
        built.chmod(0o644)
        os.replace(built, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    remove_stale(directory, target)
    return target


def remove_stale(directory: Path, keep: Path) -> None:
    """Remove the stale archives in ``directory`` (:func:`stale_archives`) other than ``keep``."""
    running = command_line_words()
    if running is None:
        return
    for stale in stale_archives(directory, keep, time.time(), running):
        with contextlib.suppress(FileNotFoundError):  # another master removed it first
            stale.unlink()


def used_now(archive: Path) -> None:
    """Record that ``archive`` is in use: its access time becomes now (its modification time,
    when it was built, stays)."""
    with contextlib.suppress(OSError):  # only the sweep's judgement depends on it
        os.utime(archive, ns=(time.time_ns(), archive.stat().st_mtime_ns))


def stale_archives(directory: Path, keep: Path, now: float, running: Collection[str],
                   ) -> list[Path]:
    """The archives in ``directory`` other than ``keep`` that are stale at ``now``: unused
    for :data:`STALE_AFTER` seconds and not among the words of running command lines."""
    found = []
    for path in directory.iterdir():
        if not ARCHIVE_PATTERN.match(path.name) or path.name == keep.name:
            continue
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        last_use = max(info.st_atime, info.st_mtime)
        if now - last_use > STALE_AFTER and str(path) not in running:
            found.append(path)
    return found


def command_line_words() -> set[str] | None:
    """Every word of every running process's command line that this user can read (a
    process agent runs as ``python3 ARCHIVE agent ...``); None where there is no /proc,
    so that nothing is judged stale."""
    if not Path("/proc/self/cmdline").exists():
        return None
    words: set[str] = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            words.update(os.fsdecode(word) for word in (entry / "cmdline").read_bytes()
                         .split(b"\0") if word)
        except OSError:  # gone, or not ours to read
            continue
    return words
