"""Preemption seen by a real coordinator: leased buildlets report it, idle ones are dropped."""

from __future__ import annotations

import json
import os
import signal

import pytest_twisted
from twisted.internet import task

from buildbot_farm.leases.preemption import SignalPreemption, preemption_notice
from tests.harness.twisted_reactor import reactor
from tests.leases.conftest import StartCoordinator

SPOT = tuple(SignalPreemption("SIGUSR1").agent_arguments())


async def preempt(pid: int) -> None:
    """Send the agent its preemption signal and give it a moment to notice."""
    os.kill(pid, signal.SIGUSR1)
    await task.deferLater(reactor, 0.3, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_leased_buildlet_reports_its_preemption_through_the_proxy(
    start_coordinator: StartCoordinator,
) -> None:
    """The status a lease holder renews with carries the notice once the host is preempted."""
    running = await start_coordinator(agent_arguments=SPOT)
    alice = running.client()
    name = (await alice.create("local"))["Name"]
    assert preemption_notice(await alice.status(name)) is None
    lease = await running.coordinator.table.get(name)
    assert lease is not None
    await preempt(json.loads(lease.handle)["pid"])
    assert preemption_notice(await alice.status(name)) == "preempted (signal): received SIGUSR1"
    await alice.destroy(name)


@pytest_twisted.ensureDeferred
async def test_the_sweep_drops_an_idle_buildlet_being_preempted(
    start_coordinator: StartCoordinator,
) -> None:
    """A warm buildlet whose host is being preempted is forgotten, so nobody leases it."""
    running = await start_coordinator(max_count=2, warm=1, agent_arguments=SPOT)
    await running.coordinator.wait_until_warm()
    (idle,) = await running.coordinator.table.all()
    assert await running.coordinator.sweep() == []
    await preempt(json.loads(idle.handle)["pid"])
    assert await running.coordinator.sweep() == [idle.name]
    assert await running.coordinator.table.get(idle.name) is None
