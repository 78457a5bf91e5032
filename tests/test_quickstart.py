"""docs/quickstart.md as written: its shell commands, run in order, reach a green farm build.

The commands are the ```sh blocks of the page (a block right after a
``<!-- quickstart-test: skip ... -->`` line is not run); the ```text block after a command
block is what those commands print: each of its lines must appear, in order, in what they
really print (a line ``...`` stands for lines left out).
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "docs/quickstart.md"
BIN = Path(sys.executable).parent
SKIP = "<!-- quickstart-test: skip"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
MARK = "@@quickstart-block"
# What the page shows for the parts of the output that depend on the machine.
SHOWN_DIR = "/home/you/farm"
SHOWN_WEB_PORT = 8010
SHOWN_PB_PORT = 9989
pytestmark = pytest.mark.master


@dataclass
class Block:
    """A block of shell commands from the page and the output the page shows for it."""

    commands: str
    shown: list[str] = field(default_factory=list)


def quickstart_blocks(markdown: str) -> list[Block]:
    """The command blocks of ``markdown`` to run, in order, each with its shown output."""
    blocks: list[Block] = []
    current: Block | None = None
    for match in FENCE.finditer(markdown):
        language, body = match.groups()
        line_before = markdown[: match.start()].rstrip("\n").rpartition("\n")[2]
        if language == "sh":
            current = None if line_before.startswith(SKIP) else Block(body)
            if current is not None:
                blocks.append(current)
        elif language == "text" and current is not None and not current.shown:
            current.shown = body.splitlines()
    return blocks


def shown_in_order(shown: list[str], printed: list[str]) -> list[str]:
    """The shown lines (except ``...``) that are not found, in order, among ``printed``."""
    missing = []
    position = 0
    for line in shown:
        if line == "...":
            continue
        try:
            position = printed.index(line, position) + 1
        except ValueError:
            missing.append(line)
    return missing


def test_the_page_has_the_steps_a_person_needs() -> None:
    """The quickstart's commands create, configure and start a master and force a farm build."""
    commands = "\n".join(block.commands for block in quickstart_blocks(QUICKSTART.read_text()))
    for needed in ("buildbot create-master", "buildbot checkconfig", "buildbot start",
                   "buildbot-worker start", "buildbot-farm force", "steps.ArtifactUpload",
                   'c["www"]', '"farm": {}', '"wsgi_dashboards": [farm_menu()]'):
        assert needed in commands
    assert "buildbot restart" not in commands


def test_quickstart_commands_run_as_written(tmp_path: Path) -> None:
    """The page's commands run in a fresh directory, the build succeeds, the output matches."""
    blocks = quickstart_blocks(QUICKSTART.read_text())
    web_port, pb_port = free_port(), free_port()
    script = ["set -eo pipefail"]
    for number, block in enumerate(blocks):
        script += [f"echo {MARK} {number}", block.commands]
    farm = tmp_path / "farm"
    try:
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=tmp_path,
            env={"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path),
                 "LANG": "C.UTF-8", "FARM_WEB_PORT": str(web_port),
                 "FARM_PB_PORT": str(pb_port),
                 # `buildbot start` gives up following the log after 10 s; a loaded CI
                 # machine can take longer to start a master that then runs fine.
                 "START_TIMEOUT": "120"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
            check=False,
        )
    finally:
        daemons = (("buildbot-worker", farm / "worker"), ("buildbot", farm / "master"))
        for tool, directory in daemons:
            if (directory / "twistd.pid").exists():
                subprocess.run([BIN / tool, "stop", directory], capture_output=True, check=False)
    assert done.returncode == 0, done.stdout
    printed = (done.stdout.replace(str(farm), SHOWN_DIR)
               .replace(f":{web_port}", f":{SHOWN_WEB_PORT}")
               .replace(f":{pb_port}", f":{SHOWN_PB_PORT}"))
    outputs = re.split(rf"^{MARK} \d+\n", printed, flags=re.MULTILINE)[1:]
    assert len(outputs) == len(blocks)
    for block, output in zip(blocks, outputs):
        missing = shown_in_order(block.shown, output.splitlines())
        assert missing == [], f"shown but not printed by:\n{block.commands}\nprinted:\n{output}"
    assert (farm / "master/artifacts/bin/hello/1/hello.pyz").is_file()
    assert "could not find plugin" not in (farm / "master/twistd.log").read_text()
