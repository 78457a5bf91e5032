"""The remote side on the oldest Python it supports, 3.9: the agent, an exec, an archive, unpack.

The whole agent suite runs under another interpreter with ``BUILDLET_AGENT_PYTHON``; this
test runs a slice of it under Python 3.9 every time, so that a newer construct in the
remote package (a 3.10 API, say, which parsing alone does not catch) fails here.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import zstandard

from buildbot_farm.private_dirs import remote_archive
from tests.remote.test_buildlet_agent import SECRET, RunningAgent

MESSAGE = ("no Python 3.9 here: install one (pyenv install 3.9, or Debian's python3.9) so that "
           "the remote side's oldest supported Python is tested")


def python39() -> str:
    """A Python 3.9 interpreter: the newest of pyenv's 3.9 versions, else python3.9 on PATH."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    installed = sorted(glob.glob(f"{root}/versions/3.9*/bin/python3.9"))
    found = installed[-1] if installed else shutil.which("python3.9")
    assert found is not None, MESSAGE
    version = subprocess.run([found, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    assert version.strip() == "(3, 9)", (found, version)
    return found


def test_the_agent_serves_under_python_3_9(tmp_path: Path) -> None:
    """Under Python 3.9 the agent starts, runs an exec, takes an archive and sends one back."""
    python = python39()
    (tmp_path / "secret").write_text(SECRET)
    proc = subprocess.Popen(
        [python, str(remote_archive()), "agent", "--listen", "127.0.0.1:0", "--workdir",
         str(tmp_path / "work"), "--secret-file", str(tmp_path / "secret")],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("BUILDLET-READY "), (line, proc.wait(5))
    agent = RunningAgent(proc, line.split()[1], tmp_path / "work")
    try:
        assert agent.json("GET", "/status")[1]["python"].startswith("3.9.")
        output, status = agent.run("sh", "-c", "echo from 3.9; exit 3")
        assert (output, status["exit_code"]) == (b"from 3.9\n", 3)
        packed = io.BytesIO()
        with tarfile.open(fileobj=packed, mode="w:gz") as tar:
            data = b"inside\n"
            entry = tarfile.TarInfo("d/f.txt")
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
        code, _, _ = agent.request("PUT", "/writetgz?dir=in", packed.getvalue())
        assert code == 200
        assert (tmp_path / "work/in/d/f.txt").read_bytes() == b"inside\n"
        code, _, body = agent.request("GET", "/tgz?dir=in")
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
            assert sorted(tar.getnames()) == ["d", "d/f.txt"]
    finally:
        assert agent.stop() == 0


def test_unpack_applies_changes_under_python_3_9(tmp_path: Path) -> None:
    """``farm-remote.pyz unpack`` under Python 3.9 applies a task's files and deletions."""
    python = python39()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old.txt").write_text("to delete")
    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w") as tar:
        entry = tarfile.TarInfo("new.txt")
        entry.size = 3
        tar.addfile(entry, io.BytesIO(b"new"))
    (tmp_path / "a.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(tarred.getvalue()))
    manifest = {"files": [{"path": "new.txt", "type": "file"}], "deleted": ["old.txt"]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    done = subprocess.run(
        [python, str(remote_archive()), "unpack", str(tmp_path / "a.tar.zst"),
         str(tmp_path / "m.json"), str(dest)],
        capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt"]
