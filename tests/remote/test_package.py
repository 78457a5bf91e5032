"""farm-remote.pyz: what goes in it, that it runs anywhere Python >= 3.9 does, and its commands."""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from buildbot_farm.remote import pyz
from tests.remote.test_buildlet_agent import AGENT_PYTHON

# Modules that may import more than the standard library, and what: the worker's Python has
# buildbot-worker (the bootstrap imports it only when it runs); the unpacker tries zstandard,
# then Python 3.14's compression.zstd, then the zstd command.
EXTRA_IMPORTS = {"buildbot_farm/remote/bootstrap.py": {"buildbot_worker"},
                 "buildbot_farm/remote/unpack.py": {"zstandard", "compression"}}


def imported_roots(source: bytes) -> set[str]:
    """The top-level names of every module ``source`` imports (absolute imports)."""
    tree = ast.parse(source)
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    names |= {node.module for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("name", sorted(pyz.sources()))
def test_each_module_imports_only_the_standard_library_and_its_own_package(name: str) -> None:
    """What the archive holds imports nothing a bare host lacks, so it runs anywhere as is."""
    allowed = set(sys.stdlib_module_names) | {"buildbot_farm"} | EXTRA_IMPORTS.get(name, set())
    assert imported_roots(pyz.sources()[name]) <= allowed


@pytest.mark.parametrize("name", sorted(pyz.sources()))
def test_each_module_is_python_3_9(name: str) -> None:
    """Every module parses with Python 3.9's grammar (no match, no except*, no 3.10+ syntax)."""
    ast.parse(pyz.sources()[name], filename=name, feature_version=(3, 9))


def test_each_module_is_short() -> None:
    """No module of the remote package is over 400 lines."""
    package = Path(pyz.__file__).parent
    long = {path.name: n for path in package.glob("*.py")
            if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}


def test_the_archive_holds_the_package_without_its_builder(tmp_path: Path) -> None:
    """The archive is the remote modules, a package root and a __main__, readable by all users."""
    built = pyz.build_archive(tmp_path)
    with zipfile.ZipFile(built) as archive:
        names = {name for name in archive.namelist() if not name.endswith("/")}
    assert "__main__.py" in names
    assert "buildbot_farm/remote/agent.py" in names
    assert "buildbot_farm/remote/pyz.py" not in names
    sources = set(pyz.sources())
    assert {name for name in names if name.endswith(".py")} == sources
    assert {name for name in names if name.endswith(".pyc")} == {
        f"{name}c" for name in sources if name.startswith("buildbot_farm/")}
    assert stat.S_IMODE(built.stat().st_mode) == 0o644
    assert built.read_bytes().startswith(b"#!/usr/bin/env python3\n")


def test_a_built_archive_is_reused_and_a_changed_package_gets_another(tmp_path: Path) -> None:
    """The same sources give the same file, left as it is; different ones another name."""
    first = pyz.build_archive(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert pyz.build_archive(tmp_path) == first
    assert first.stat().st_mtime_ns == mtime
    files = pyz.sources()
    changed = dict(files, **{"buildbot_farm/remote/main.py": files["buildbot_farm/remote/main.py"]
                             + b"\n"})
    assert pyz.digest(changed) != pyz.digest(files)
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def _old_archive(directory: Path, digest: str, age: float) -> Path:
    """A file named as an archive of another version, last used ``age`` seconds ago."""
    path = directory / f"farm-remote-{digest}.pyz"
    path.write_bytes(b"an archive of another version")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_building_a_new_archive_removes_the_stale_ones_only(tmp_path: Path) -> None:
    """A new archive removes the old versions nobody used for a day and no process runs;
    one a process runs from, one used recently and files of other names stay."""
    stale = _old_archive(tmp_path, "0" * 16, pyz.STALE_AFTER + 3600)
    running = _old_archive(tmp_path, "1" * 16, pyz.STALE_AFTER + 3600)
    recent = _old_archive(tmp_path, "2" * 16, 60)
    other = tmp_path / "notes.pyz"
    other.write_bytes(b"not an archive of the farm")
    os.utime(other, (0, 0))
    agent = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", str(running)],
                             stdin=subprocess.PIPE)
    try:
        built = pyz.build_archive(tmp_path)
    finally:
        agent.communicate(timeout=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [built.name, running.name, recent.name, other.name])
    assert not stale.exists()


def test_an_archive_in_use_is_never_stale(tmp_path: Path) -> None:
    """Each use of a built archive counts as its last use (its access time), its build time
    stays; a long-built archive still handed out is not stale."""
    built = pyz.build_archive(tmp_path)
    long_ago = time.time_ns() - 2 * pyz.STALE_AFTER * 10**9
    os.utime(built, ns=(long_ago, long_ago))
    assert pyz.stale_archives(tmp_path, tmp_path / "x.pyz", time.time(), set()) == [built]
    assert pyz.build_archive(tmp_path) == built
    assert built.stat().st_mtime_ns == long_ago
    assert pyz.stale_archives(tmp_path, tmp_path / "x.pyz", time.time(), set()) == []


def test_the_archive_runs_from_its_sources_where_its_bytecode_does_not_fit(
    tmp_path: Path,
) -> None:
    """Bytecode with another Python's magic number is passed over for the source beside it."""
    built = pyz.build_archive(tmp_path)
    other = tmp_path / "other.pyz"
    with zipfile.ZipFile(built) as source, zipfile.ZipFile(other, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, b"\0\0\r\n" + data[4:] if item.filename.endswith(".pyc")
                            else data)
    done = subprocess.run([AGENT_PYTHON, str(other), "frobnicate"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "is not a command" in done.stderr


def test_an_unknown_command_says_which_there_are(tmp_path: Path) -> None:
    """``farm-remote.pyz frobnicate`` exits 2 naming the commands it has."""
    done = subprocess.run([AGENT_PYTHON, str(pyz.build_archive(tmp_path)), "frobnicate"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "'frobnicate' is not a command; give one of agent, prestart" in done.stderr
