"""``buildbot-farm force`` when the master cannot be asked: one line saying what and where."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness.ports import free_port

BIN = Path(sys.executable).parent


def test_force_names_the_url_it_could_not_reach() -> None:
    """Forcing on a port where no master listens exits 1 with the URL asked, no traceback."""
    url = f"http://127.0.0.1:{free_port()}/"
    done = subprocess.run(
        [BIN / "buildbot-farm", "force", "hello", "--url", url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"buildbot-farm force: cannot reach {url}api/v2/forceschedulers/force:"
    )
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
