"""Building ``farm-remote.pyz``, the one file the master copies to where the remote side runs.

Master side only (it is not in the archive). The archive holds this package's other modules
and runs :func:`buildbot_farm.remote.main.main`; it is built with :mod:`zipapp` at first use,
named after the digest of what it holds, so that a changed package gets a new archive and a
built one is never rebuilt. Each module's bytecode for the master's Python goes beside it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import py_compile
import shutil
import tempfile
import zipapp
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ARCHIVE_NAME = "farm-remote.pyz"
# What the archive leaves out: the builder itself, which only the master runs.
MASTER_ONLY = frozenset({"pyz.py"})
ROOT_MAIN = b"import sys\nfrom buildbot_farm.remote.main import main\nsys.exit(main())\n"
ROOT_PACKAGE = b'"""The remote side of buildbot_farm only (see buildbot_farm.remote)."""\n'


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
    return target
