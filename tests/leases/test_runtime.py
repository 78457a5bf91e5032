"""LeaseRuntime: the coordinator runtime FarmService and the standalone coordinator share."""

from __future__ import annotations

from typing import Any, cast

import pytest_twisted
from twisted.internet import task
from twisted.web import resource

from buildbot_farm.leases.config import BuildletPool, FarmCoordinator
from buildbot_farm.leases.coordinator import Coordinator
from buildbot_farm.leases.runtime import SWEEPER, LeaseRuntime


class SweepsThatFail:
    """A coordinator whose first two sweeps fail; it counts every sweep."""

    def __init__(self) -> None:
        self.sweeps = 0
        self.stopped: list[str] = []

    async def sweep(self) -> list[str]:
        """Fail twice, then sweep nothing."""
        self.sweeps += 1
        if self.sweeps <= 2:
            raise RuntimeError(f"sweep {self.sweeps} failed")
        return []

    async def stop(self) -> None:
        """Remember a stop."""
        self.stopped.append("stop")

    async def halt_all(self) -> list[str]:
        """Remember a halt; one buildlet halted."""
        self.stopped.append("halt")
        return ["b1"]


def runtime(coordinator: SweepsThatFail, **settings: Any) -> LeaseRuntime:
    """A runtime around ``coordinator`` with a 10 s sweep."""
    wanted = FarmCoordinator(secret="s" * 32, pools=(BuildletPool("local"),), sweep_interval=10,
                             **settings)
    return LeaseRuntime(wanted, cast(Coordinator, coordinator), resource.Resource())


def test_a_failing_sweep_does_not_stop_the_later_sweeps() -> None:
    """The sweeper (the standalone coordinator's and the service's) logs a failed sweep and
    sweeps again at the next interval, forever."""
    clock = task.Clock()
    coordinator = SweepsThatFail()
    sweeper = runtime(coordinator).sweeper(clock)
    assert sweeper.name == SWEEPER
    sweeper.start(now=False)
    clock.pump([10] * 5)
    assert coordinator.sweeps == 5
    assert sweeper.running
    sweeper.stop()


@pytest_twisted.ensureDeferred
async def test_stop_keeps_or_halts_the_buildlets_as_on_stop_says() -> None:
    """on_stop='keep' stops the coordinator alone; 'halt' destroys the buildlets and says
    which."""
    kept = SweepsThatFail()
    assert await runtime(kept).stop() == []
    halted = SweepsThatFail()
    assert await runtime(halted, on_stop="halt").stop() == ["b1"]
    assert (kept.stopped, halted.stopped) == (["stop"], ["halt"])
