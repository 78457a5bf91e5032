"""A running master refuses a reconfig that brings one of the cross-object mistakes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from buildbot_farm.demo import LocalFarm
from tests.config_checks.test_checkconfig import BUILDBOT, GOOD
from tests.harness.ports import free_port

pytestmark = pytest.mark.master


def test_a_reconfig_with_a_mistake_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """`buildbot reconfig` with a buildlet_type no pool has aborts, naming it in the log."""
    config = tmp_path / "master.cfg"
    config.write_text(GOOD)
    farm = LocalFarm(config, tmp_path / "farm", env={
        "FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port()),
        "FARM_WORKER_PASSWORD": "password",
    })
    farm.create()
    farm.start()
    try:
        (farm.master_dir / "master.cfg").write_text(
            GOOD.replace('buildlet_type="local"', 'buildlet_type="lcoal"')
        )
        subprocess.run([BUILDBOT, "reconfig", str(farm.master_dir)],
                       capture_output=True, text=True, timeout=120, check=False)
        log = farm.master_log.read_text()
        assert "FarmLatentWorker 'leased': buildlet_type 'lcoal' is not a pool" in log
        assert "configuration update aborted without making any changes" in log
        assert farm.api("workers/leased")["workers"], "the old configuration went away"
    finally:
        farm.stop()
