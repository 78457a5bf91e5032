"""The plugin as a user installs it: sdist and wheel built, the wheel in a fresh virtualenv.

Nothing here runs from the checkout: the virtualenv lives under the test's temporary
directory, the commands run there with no ``PYTHONPATH``, and the tests check that
``buildbot_farm`` is imported from the virtualenv's site-packages.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildbot_farm.example import DEMO_SECRETS
from tests.harness.docker_engine import DockerEngine
from tests.harness.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.install, pytest.mark.master]
BUILD_LOG = "build.log"  # what ``python -m build`` printed, kept beside the sdist and wheel

# Run by the virtualenv's python: loads each entry point through buildbot.plugins, checks
# that it is the object setup.cfg names, and prints where buildbot_farm was imported from.
LOAD_ENTRY_POINTS = """\
import importlib, json, sys
import buildbot.plugins
import buildbot_farm
from buildbot.plugins.db import get_plugins

loaded = []
for group, entries in json.loads(sys.argv[1]).items():
    kind = group.split(".", 1)[1]
    www = get_plugins("www", None, load_now=True) if kind == "www" else None
    for name, target in entries.items():
        found = www.get(name) if www else getattr(getattr(buildbot.plugins, kind), name)
        module, _, attribute = target.partition(":")
        assert found is getattr(importlib.import_module(module), attribute), (group, name)
        loaded.append(f"{kind}.{name}")
print(json.dumps({"file": buildbot_farm.__file__, "loaded": loaded}))
"""


@dataclass
class Installed:
    """A virtualenv with the wheel installed, and the environment to run its commands in."""

    venv: Path
    env: Mapping[str, str]

    def run(self, *command: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
        """Run a program of the virtualenv's bin/ in ``cwd``; return what it did."""
        return subprocess.run(
            [str(self.venv / "bin" / command[0]), *map(str, command[1:])],
            cwd=cwd, env={**self.env, **env}, capture_output=True, text=True, timeout=600,
            check=False,
        )


def outside_env() -> dict[str, str]:
    """This process's environment without what would point Python at the checkout."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(name, None)
    checkout_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if part != checkout_bin
    )
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory where ``python -m build`` put the sdist and the wheel built from it.

    It builds from a copy of the files git tracks, as a fresh clone has them: build
    leftovers of the checkout (an egg-info's stale file list) cannot hide a missing file.
    """
    source = tmp_path_factory.mktemp("source")
    for name in git_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        cwd=out, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (out / BUILD_LOG).write_text(done.stdout + done.stderr)
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    """The wheel ``python -m build`` made (from the sdist)."""
    (found,) = dist.glob("buildbot_farm-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Installed:
    """A fresh virtualenv, outside the checkout, with the wheel and its demo extra installed."""
    home = tmp_path_factory.mktemp("installed")
    venv = home / "venv"
    env = outside_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], cwd=home, env=env, check=True)
    done = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", f"{wheel}[demo]"],
        cwd=home, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Installed(venv, env)


def git_files(*paths: str) -> set[str]:
    """The files (under ``paths``) that git tracks, or would: not ignored, not yet added."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *paths],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    return {name for name in listed if name and (ROOT / name).is_file()}


def setup_cfg_entry_points() -> dict[str, dict[str, str]]:
    """The buildbot.* entry points setup.cfg declares: ``{group: {name: "module:attr"}}``."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    groups: dict[str, dict[str, str]] = {}
    for group, lines in parser["options.entry_points"].items():
        if group.startswith("buildbot."):
            pairs = (line.split("=", 1) for line in lines.strip().splitlines())
            groups[group] = {name.strip(): target.strip() for name, target in pairs}
    return groups


def test_the_wheel_and_the_sdist_hold_every_file_of_the_package(dist: Path, wheel: Path) -> None:
    """The wheel's files are exactly the package's tracked files, and the sdist has them all."""
    tracked = git_files("buildbot_farm")
    in_wheel = {
        name for name in zipfile.ZipFile(wheel).namelist()
        if not name.startswith("buildbot_farm-") and not name.endswith("/")
    }
    assert sorted(tracked - in_wheel) == [], "tracked but missing from the wheel"
    assert sorted(in_wheel - tracked) == [], "in the wheel but not tracked by git"
    (sdist,) = dist.glob("buildbot_farm-*.tar.gz")
    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert sorted(tracked - in_sdist) == [], "tracked but missing from the sdist"


def test_setuptools_finds_every_directory_of_the_package_as_a_package(dist: Path) -> None:
    """No directory of the package is importable yet missing from setuptools' packages.

    setuptools warns of such a directory ("Package would be ignored") and says a future
    version will leave its files out of the wheel, the dashboard's templates once among them.
    """
    built = (dist / BUILD_LOG).read_text()
    assert "Package would be ignored" not in built, built[-3000:]


def test_every_entry_point_loads_through_buildbot_plugins(installed: Installed) -> None:
    """In the fresh virtualenv every entry point of setup.cfg loads through buildbot.plugins."""
    groups = setup_cfg_entry_points()
    assert set(groups) == {
        "buildbot.util", "buildbot.worker", "buildbot.steps", "buildbot.schedulers",
        "buildbot.reporters", "buildbot.www",
    }
    done = installed.run("python", "-c", LOAD_ENTRY_POINTS, json.dumps(groups),
                         cwd=installed.venv.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout)
    assert Path(answer["file"]).is_relative_to(installed.venv), answer["file"]
    assert len(answer["loaded"]) == sum(len(entries) for entries in groups.values())
    assert "www.farm" in answer["loaded"]


def test_checkconfig_accepts_the_packaged_example(installed: Installed, tmp_path: Path) -> None:
    """`buildbot-farm example-config` writes the example and fills its secrets directory; the
    installed checkconfig takes it."""
    config = tmp_path / "master.cfg"
    written = installed.run("buildbot-farm", "example-config", config, cwd=tmp_path)
    assert written.returncode == 0, written.stdout + written.stderr
    secrets_dir = tmp_path / "secrets"
    assert secrets_dir.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in secrets_dir.iterdir()) == sorted(DEMO_SECRETS)
    printed = installed.run("buildbot-farm", "example-config", cwd=tmp_path)
    assert printed.stdout == config.read_text()
    again = installed.run("buildbot-farm", "example-config", config, cwd=tmp_path)
    assert again.returncode == 1
    assert f"{config} exists; keep it, or give --force" in again.stderr
    done = installed.run("buildbot", "checkconfig", config, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Config file is good!" in done.stdout


def test_the_demo_runs_green_from_the_installed_wheel(
    installed: Installed, tmp_path: Path, docker_engine: DockerEngine, base_image: str
) -> None:
    """`buildbot-farm demo --once` of the wheel, with no checkout, runs the example builds."""
    done = installed.run(
        "buildbot-farm", "demo", "--once", "--basedir", tmp_path / "demo", cwd=tmp_path,
        FARM_WEB_PORT=str(free_port()), FARM_PB_PORT=str(free_port()),
        DOCKER_HOST=f"unix://{docker_engine.socket_path}",
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    assert done.stdout.count(" SUCCESS: ") == 2, done.stdout
    assert "farm service up on sqlite" in done.stdout
    assert not (tmp_path / "demo/master/twistd.pid").exists(), "the master was left running"
