"""No leaked buildlets, with a real master: kill -9, reconfig, stopping for good, reaping."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.demo import LocalFarm
from buildbot_farm.leases import keys
from buildbot_farm.leases.providers.isolation import default_root
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port

pytestmark = pytest.mark.master
SECRET = "no-leaks-test-secret"
RETRY = 5
BIN = Path(sys.executable).parent

MASTER_CFG = """
import os
from buildbot.plugins import schedulers, steps, util, worker

{preamble}
c["services"] = [
    util.FarmService(coordinator=util.FarmCoordinator(
        secret="{secret}", pools=[util.BuildletPool("local", max_count=2, warm=1)],
        idle_timeout={idle_timeout}, sweep_interval=1, on_stop="{on_stop}")),
]
c["workers"] = [
    worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"]),
    worker.FarmLatentWorker("leased", buildlet_type="local", keepalive_interval={keepalive}),
]
slow = util.BuildFactory([steps.ShellCommand(command=["sleep", "6"], name="slow")])
c["builders"] = [util.BuilderConfig(name="slow", workernames=["leased"], factory=slow)]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["slow"])]
"""


def write_config(path: Path, on_stop: str = "keep", idle_timeout: float = 600,
                 keepalive: float = 1) -> None:
    """Write MASTER_CFG to ``path`` with the coordinator's ``on_stop`` and ``idle_timeout`` and the
    latent worker's ``keepalive`` interval."""
    path.write_text(MASTER_CFG.format(
        preamble=LOOPBACK_MASTER, secret=SECRET, on_stop=on_stop, idle_timeout=idle_timeout,
        keepalive=keepalive,
    ))


def start_farm(tmp_path: Path, **settings: Any) -> LocalFarm:
    """Create and start a master of MASTER_CFG under ``tmp_path`` on free ports; ``settings`` go to
    :func:`write_config`."""
    config = tmp_path / "master.cfg"
    write_config(config, **settings)
    local = LocalFarm(
        config, tmp_path / "farm",
        env={"FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port())},
        build_timeout=120,
    )
    local.create()
    local.start()
    return local


@pytest.fixture
def farm(tmp_path: Path) -> Any:
    """A running master with :func:`start_farm`'s default settings, stopped afterwards."""
    local = start_farm(tmp_path)
    yield local
    local.stop()


def wait_for(predicate: Any, within: float, what: str) -> Any:
    """Poll ``predicate`` every 0.3 s and return its first true value; fail naming ``what`` after
    ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {within:g} s waiting for {what}")


def force(farm: LocalFarm) -> int:
    """Force a build of builder slow; the id of its build request."""
    answer = farm.api(
        "forceschedulers/force",
        {"jsonrpc": "2.0", "id": 1, "method": "force", "params": {"builderNames": ["slow"]}},
    )
    return int(next(iter(answer["result"][1].values())))


def builds_of(farm: LocalFarm, request_id: int) -> list[dict[str, Any]]:
    """The builds of build request ``request_id`` so far."""
    return list(farm.api(f"buildrequests/{request_id}/builds")["builds"])


def wait_for_step(farm: LocalFarm, request_id: int) -> None:
    """Wait until the latest build of ``request_id`` has started its slow step (on a buildlet)."""
    def running_step() -> bool:
        builds = builds_of(farm, request_id)
        if not builds:
            return False
        steps = farm.api(f"builds/{builds[-1]['buildid']}/steps")["steps"]
        return any(s["name"] == "slow" and s["started_at"] for s in steps)

    wait_for(running_step, 60, "the slow step to start on a buildlet")


def wait_for_success(farm: LocalFarm, request_id: int) -> list[dict[str, Any]]:
    """Wait until the latest build of ``request_id`` has ended green; all that request's builds."""
    def done() -> Any:
        builds = builds_of(farm, request_id)
        return builds if builds and builds[-1]["complete"] and builds[-1]["results"] == 0 else None

    return list(wait_for(done, 120, f"a green build of request {request_id}"))


def coordinator(farm: LocalFarm, method: str, path: str, headers: dict[str, str] | None = None,
                form: dict[str, str] | None = None) -> Any:
    """One request to the master's coordinator as user-buildbot, ``form`` sent urlencoded when
    given; its decoded JSON answer."""
    key = keys.user_key(SECRET.encode(), "user-buildbot")
    request = urllib.request.Request(
        f"{farm.web_url}plugins/farm/coordinator{path}", method=method, headers=headers or {},
        data=urllib.parse.urlencode(form).encode() if form is not None else None,
    )
    request.add_unredirected_header(
        "Authorization", "Basic " + base64.b64encode(f"user-buildbot:{key}".encode()).decode(),
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def buildlet_dirs(farm: LocalFarm) -> list[Path]:
    """The home directories of the master's local buildlets, sorted; none when the root is
    missing."""
    root = default_root(farm.master_dir, "local")
    return sorted(root.iterdir()) if root.is_dir() else []


def agent_pids(farm: LocalFarm) -> list[int]:
    """The agent pids of those local buildlets that have a pid file."""
    return [int((home / "pid").read_text()) for home in buildlet_dirs(farm)
            if (home / "pid").exists()]


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie, as /proc/PID/stat says."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def no_frame_errors(farm: LocalFarm) -> None:
    """Assert the master's log has no FrameError and no 'output stream ended'."""
    text = farm.master_log.read_text(errors="replace")
    assert "FrameError" not in text
    assert "output stream ended" not in text


def held(farm: LocalFarm) -> list[str]:
    """The names of the buildlets user-buildbot holds, as the coordinator's list shows them."""
    return [lease["Name"] for lease in coordinator(farm, "GET", "/buildlet/list")]


def test_a_master_killed_mid_build_releases_its_lease_when_it_starts_again(
    farm: LocalFarm,
) -> None:
    """After kill -9 mid-build and a start, the retried build and the next one leave no lease."""
    request_id = force(farm)
    wait_for_step(farm, request_id)
    orphan = held(farm)
    assert len(orphan) == 1
    pid = int((farm.master_dir / "twistd.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    # twistd refuses to start while the stale pid file names a process, even a zombie.
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the killed master to be reaped")
    farm.start_master()

    builds = wait_for_success(farm, request_id)
    assert builds[0]["results"] == RETRY
    wait_for_success(farm, force(farm))
    wait_for(lambda: not held(farm), 30, "the latent worker to hold no lease")
    text = farm.master_log.read_text(errors="replace")
    assert f"released {orphan[0]}, held before the master restarted" in text
    wait_for(lambda: len(buildlet_dirs(farm)) == 1, 30, "only the warm buildlet to be left")
    assert len([pid for pid in agent_pids(farm) if alive(pid)]) == 1
    no_frame_errors(farm)


def test_reconfiguring_a_live_latent_worker_keeps_its_lease(farm: LocalFarm) -> None:
    """A reconfig mid-build that changes the worker's arguments: the build finishes, and its
    buildlet is released once, with nothing left over."""
    request_id = force(farm)
    wait_for_step(farm, request_id)
    [name] = held(farm)
    write_config(farm.master_dir / "master.cfg", keepalive=2)
    subprocess.run([BIN / "buildbot", "reconfig", str(farm.master_dir)], check=True,
                   capture_output=True, timeout=60)
    builds = wait_for_success(farm, request_id)
    assert len(builds) == 1, "the reconfig interrupted the build"
    wait_for(lambda: not held(farm), 30, "the buildlet's release")
    wait_for(lambda: f"released {name}" in farm.master_log.read_text(), 30, "the release")
    text = farm.master_log.read_text(errors="replace")
    assert text.count(f"released {name}") == 1
    assert "was already gone" not in text
    wait_for(lambda: len(buildlet_dirs(farm)) == 1, 30, "only the warm buildlet to be left")
    no_frame_errors(farm)


def test_agents_of_a_coordinator_that_never_returns_halt_themselves(tmp_path: Path) -> None:
    """Stopped with on_stop="keep" and never started again, the buildlets (leased and warm)
    halt themselves by their deadline, leaving no process and no directory."""
    farm = start_farm(tmp_path, idle_timeout=3)
    try:
        lease = coordinator(farm, "POST", "/buildlet/create", form={"type": "local"})
        wait_for(lambda: len(buildlet_dirs(farm)) == 2, 60, "the warm pool's refill")
        pids = agent_pids(farm)
        subprocess.run([BIN / "buildbot", "stop", str(farm.master_dir)], check=True,
                       capture_output=True, timeout=60)
        assert all(alive(pid) for pid in pids), "on_stop='keep' halted the buildlets"
        assert lease["Name"] == "user-buildbot-local-0"
        assert len(buildlet_dirs(farm)) == 2
        # idle_timeout 3 s + agent_grace (2 sweep intervals + 5 s) = 10 s at most.
        wait_for(lambda: not buildlet_dirs(farm), 20, "the agents to halt themselves")
        wait_for(lambda: not any(alive(pid) for pid in pids), 5, "the agents to exit")
    finally:
        farm.stop()


def test_stopping_with_on_stop_halt_leaves_no_agent(tmp_path: Path) -> None:
    """With on_stop="halt", `buildbot stop` destroys leased and warm buildlets alike."""
    farm = start_farm(tmp_path, on_stop="halt")
    try:
        coordinator(farm, "POST", "/buildlet/create", form={"type": "local"})
        wait_for(lambda: len(buildlet_dirs(farm)) == 2, 60, "the warm pool's refill")
        pids = agent_pids(farm)
        subprocess.run([BIN / "buildbot", "stop", str(farm.master_dir)], check=True,
                       capture_output=True, timeout=60)
        assert buildlet_dirs(farm) == []
        assert not any(alive(pid) for pid in pids)
        assert "stopping halted the buildlets" in farm.master_log.read_text()
    finally:
        farm.stop()


def test_reap_halts_what_a_stopped_master_kept(tmp_path: Path) -> None:
    """`buildbot-farm reap` destroys the buildlets a master stopped with "keep" left running."""
    farm = start_farm(tmp_path)
    try:
        coordinator(farm, "POST", "/buildlet/create", form={"type": "local"})
        wait_for(lambda: len(buildlet_dirs(farm)) == 2, 60, "the warm pool's refill")
        pids = agent_pids(farm)
        subprocess.run([BIN / "buildbot", "stop", str(farm.master_dir)], check=True,
                       capture_output=True, timeout=60)
        assert all(alive(pid) for pid in pids)
        reaped = subprocess.run(
            [BIN / "buildbot-farm", "reap", "--basedir", str(farm.master_dir)],
            check=True, capture_output=True, text=True, timeout=60,
        )
        assert reaped.stdout.count("reaped ") == 2, reaped.stdout
        assert buildlet_dirs(farm) == []
        assert not any(alive(pid) for pid in pids)
    finally:
        farm.stop()
