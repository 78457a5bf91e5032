"""Agents that outlive their coordinator halt themselves, the sweep keeps live ones alive,
and a coordinator stopping for good (on_stop="halt", buildbot-farm reap) halts them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, task

from buildbot_farm.leases.config import FarmCoordinator
from buildbot_farm.leases.model import ExpiryPolicy
from buildbot_farm.leases.reap import ReapError, reap
from buildbot_farm.leases.store import LeaseTable
from tests.harness.twisted_reactor import reactor
from tests.leases.conftest import RunningCoordinator, StartCoordinator, plain_http


def agent_pids(running: RunningCoordinator) -> dict[str, int]:
    """The pid of each buildlet's agent by buildlet name, read from the pid files under the
    provider's root."""
    root = running.provider.root
    return {home.name: int((home / "pid").read_text()) for home in sorted(root.iterdir())}


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie, as /proc/PID/stat says."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


async def sleep(seconds: float) -> None:
    """Wait ``seconds`` on the reactor without blocking it."""
    await task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_sweeps_keep_agents_alive_and_without_them_the_agents_halt(
    start_coordinator: StartCoordinator,
) -> None:
    """While the coordinator sweeps, leased and warm agents live past their grace; once it is
    gone for good they halt themselves by lease expiry + grace, leaving no process or directory."""
    # No sandbox: the command's pid must be one this test can see (no PID namespace).
    running = await start_coordinator(
        max_count=3, warm=1, policy=ExpiryPolicy(idle_timeout=2, max_lifetime=600),
        agent_grace=2, sandbox="none",
    )
    await running.coordinator.wait_until_warm()
    alice = running.client()
    name = (await alice.create("local"))["Name"]
    running_command = defer.ensureDeferred(
        alice.exec(name, "sh", ["-c", "echo $$ > pid; exec sleep 600"])
    )
    running_command.addErrback(lambda _: None)  # it ends when its agent halts
    pid_file = running.provider.root / "warm-local-0" / "work" / "pid"
    started = time.monotonic()
    while time.monotonic() - started < 5:
        await running.coordinator.sweep()
        await alice.status(name)  # the lessee's use renews the lease
        await sleep(0.5)
    pids = agent_pids(running)
    assert len(pids) == 2
    assert all(alive(pid) for pid in pids.values())
    command = int(pid_file.read_text())

    await running.port.stopListening()  # the coordinator never comes back: no more sweeps
    stopped = time.monotonic()
    while any(alive(pid) for pid in pids.values()) and time.monotonic() - stopped < 15:
        await sleep(0.2)
    took = time.monotonic() - stopped
    assert not any(alive(pid) for pid in pids.values()), "an agent outlived its deadline"
    # idle_timeout + grace after the last renewal, with room for a loaded machine
    assert took < 2 + 2 + 4, f"the agents halted {took:.1f} s after the last renewal"
    assert not alive(command)
    assert list(running.provider.root.iterdir()) == []
    await running_command


@pytest_twisted.ensureDeferred
async def test_halt_all_destroys_every_buildlet_and_warms_none(
    start_coordinator: StartCoordinator,
) -> None:
    """halt_all (on_stop="halt") destroys leased and warm buildlets and starts no new ones."""
    running = await start_coordinator(max_count=3, warm=1)
    await running.coordinator.wait_until_warm()
    await running.client().create("local")
    await running.coordinator.wait_until_warm()
    pids = agent_pids(running)
    assert len(pids) == 2
    halted = await running.coordinator.halt_all()
    assert sorted(halted) == ["user-alice-local-0", "warm-local-1"]
    await running.coordinator.wait_until_warm()
    assert await running.coordinator.table.all() == []
    assert list(running.provider.root.iterdir()) == []
    assert not any(alive(pid) for pid in pids.values())


@pytest_twisted.ensureDeferred
async def test_the_coordinator_sets_each_agents_deadline(
    start_coordinator: StartCoordinator,
) -> None:
    """A leased agent's deadline is its lease's expiry plus the grace; a warm one's the grace."""
    running = await start_coordinator(
        max_count=3, warm=1, policy=ExpiryPolicy(idle_timeout=100, max_lifetime=600),
        agent_grace=20,
    )
    await running.coordinator.wait_until_warm()
    lease = await running.coordinator.create("user-alice", "local")
    await running.coordinator.wait_until_warm()
    await running.coordinator.sweep()
    for buildlet in await running.coordinator.table.all():
        answer = await plain_http().get(
            buildlet.url + "/deadline", headers={"X-Buildlet-Secret": buildlet.secret}
        )
        seconds = json.loads(await answer.content())["seconds"]
        expected = 120 if buildlet.name == lease.name else 20
        assert expected - 5 < seconds <= expected, (buildlet.name, seconds)


def test_on_stop_must_be_keep_or_halt() -> None:
    """FarmCoordinator refuses an on_stop other than keep or halt, naming both."""
    secret = "on-stop-test-secret"
    assert FarmCoordinator(secret=secret).problems() == []
    assert FarmCoordinator(secret=secret, on_stop="halt").problems() == []
    [problem] = FarmCoordinator(secret=secret, on_stop="reap").problems()
    assert "on_stop must be 'keep'" in problem
    assert "'halt'" in problem
    assert FarmCoordinator(secret=secret, sweep_interval=10).agent_grace == 25


@pytest_twisted.ensureDeferred
async def test_reap_wants_a_name_when_several_coordinators_share_the_database(
    start_coordinator: StartCoordinator,
) -> None:
    """Reap refuses to guess between coordinators, and with a name reaps only that one's."""
    running = await start_coordinator()
    name = (await running.client().create("local"))["Name"]
    pid = agent_pids(running)[name]
    other = LeaseTable(running.database, "other-master", ExpiryPolicy())
    await other.add_starting("x-local-0", "local", "process", "user-x", 0.0)
    await running.port.stopListening()
    await running.coordinator.stop()

    with pytest.raises(ReapError, match="coordinator, other-master"):
        await reap(running.database, reactor, None, None)
    assert await reap(running.database, reactor, "coordinator", None) == [
        f"reaped {name} (leased)"
    ]
    assert not alive(pid)
    assert list(running.provider.root.iterdir()) == []
    assert [lease.name for lease in await other.all()] == ["x-local-0"]
