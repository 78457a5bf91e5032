"""Reverse pools: hosts join with `buildbot-farm agent --register` and are leased like any."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import task

from buildbot_farm.leases import keys
from buildbot_farm.leases.client import CoordinatorRequestError
from buildbot_farm.leases.model import LeaseState
from buildbot_farm.leases.pools import CoordinatorError
from tests.harness.twisted_reactor import reactor
from tests.leases.conftest import SECRET, StartCoordinator

BIN = Path(sys.executable).parent


async def sleep(seconds: float) -> None:
    """Wait ``seconds`` on the reactor without blocking it."""
    await task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_registered_host_is_leased_and_rejoins_clean(
    start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    """A host joins the pool, is leased and used, and after halt leaves its work dir empty."""
    running = await start_coordinator(reverse_pool=1)
    workdir = tmp_path / "host-work"
    host = subprocess.Popen(
        [BIN / "buildbot-farm", "agent", "--register", running.url, "--type", "hosts",
         "--workdir", str(workdir), "--heartbeat", "0.5", "--once",
         "--user", "user-host1", "--key", keys.user_key(SECRET, "user-host1")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for _ in range(100):
            idle = [
                lease for lease in await running.coordinator.table.all()
                if lease.type == "hosts" and lease.state is LeaseState.IDLE
            ]
            if idle:
                break
            await sleep(0.1)
        assert idle, "the host never registered"
        alice = running.client()
        name = (await alice.create("hosts"))["Name"]
        output: list[bytes] = []
        status = await alice.exec(
            name, "sh", ["-c", "pwd; echo x > leftover"], on_output=output.append
        )
        assert status.ok
        assert b"".join(output).decode().strip() == str(workdir.resolve())
        await alice.destroy(name)
        for _ in range(100):
            if host.poll() is not None:
                break
            await sleep(0.1)
        stdout, stderr = host.communicate(timeout=10)
        assert host.returncode == 0, stderr
        assert "registered" in stdout
        assert "rejoining with a clean work directory" in stdout
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


@pytest_twisted.ensureDeferred
async def test_an_empty_reverse_pool_says_how_to_add_a_host(
    start_coordinator: StartCoordinator,
) -> None:
    """Leasing from a reverse pool with no free host is 503 naming the register command."""
    running = await start_coordinator(reverse_pool=1)
    with pytest.raises(CoordinatorRequestError, match="buildbot-farm agent --register") as e:
        await running.client().create("hosts")
    assert e.value.status == 503


@pytest_twisted.ensureDeferred
async def test_registering_into_a_normal_pool_is_refused(
    start_coordinator: StartCoordinator,
) -> None:
    """Only reverse pools take registrations; others refuse with 400 and say why."""
    running = await start_coordinator(reverse_pool=1)
    with pytest.raises(CoordinatorError, match="not a reverse pool"):
        await running.coordinator.register("local", "http://127.0.0.1:9", "s")
    assert await running.coordinator.table.all() == []


def test_the_host_agent_needs_a_key(tmp_path: Path) -> None:
    """The agent command exits 2 when it has no key to register with."""
    done = subprocess.run(
        [BIN / "buildbot-farm", "agent", "--register", "http://127.0.0.1:9/", "--type", "x",
         "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, check=False, env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert "give --user and --key" in done.stderr
