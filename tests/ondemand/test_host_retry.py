"""OnDemandHost and builds that end RETRY (a lost worker, a preempted host): the janitor
retries the job as a new attempt, and Buildbot's own rerun of the request is stopped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest_twisted
from buildbot.process.results import RETRY, SUCCESS
from twisted.internet import task

from buildbot_farm import db
from buildbot_farm.leases.preemption import PREEMPTED_PROPERTY
from buildbot_farm.ondemand.config import OnDemandBuilds
from buildbot_farm.ondemand.host import OnDemandHost
from buildbot_farm.ondemand.store import ATTEMPT_PROPERTY, KEY_PROPERTY
from buildbot_farm.testing import FakeFarmContext
from tests.ondemand.test_host import FakeConsumer, FakeMaster

KEY = "c" * 64
REQUEST = 7


class DeliveringMq:
    """An mq that keeps its consumers' callbacks so the test can deliver build events."""

    def __init__(self) -> None:
        self.callbacks: dict[str | None, Any] = {}

    async def startConsuming(  # noqa: N802
        self, callback: Any, topic: tuple[str | None, ...]
    ) -> FakeConsumer:
        """Keep the callback under the event name."""
        self.callbacks[topic[-1]] = callback
        return FakeConsumer()

    async def deliver(self, event: str, build: dict[str, Any]) -> None:
        """Hand ``build`` to the consumer of ``event`` and wait for it."""
        await self.callbacks[event](("builds", str(build["buildid"]), event), build)


class FakeData:
    """The data API reads the host makes, over a list of builds; records control calls."""

    def __init__(self) -> None:
        self.builds: list[dict[str, Any]] = []
        self.properties: dict[int, dict[str, Any]] = {}
        self.controls: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = []

    async def get(self, path: tuple[Any, ...], filters: Any = None) -> Any:
        """Build properties and a request's builds; nothing else is asked here."""
        if path[0] == "builds":
            return {KEY_PROPERTY: (KEY, "test"), ATTEMPT_PROPERTY: (1, "test"),
                    "workername": (f"w{path[1]}", "test"), **self.properties.get(path[1], {})}
        assert path[0] == "buildrequests", path
        return [b for b in self.builds if b["buildrequestid"] == path[1]]

    async def control(self, action: str, args: dict[str, Any], path: tuple[Any, ...]) -> None:
        """Remember the control call."""
        self.controls.append((action, args, path))


def build(buildid: int, results: int | None, state: str = "") -> dict[str, Any]:
    """A build of request REQUEST as the data API gives it."""
    return {"buildid": buildid, "buildrequestid": REQUEST, "results": results,
            "state_string": state}


@pytest_twisted.async_yield_fixture
async def host(database: db.Database) -> AsyncIterator[tuple[OnDemandHost, FakeData]]:
    """A configured host whose master delivers build events and answers data reads."""
    farm = FakeFarmContext(FakeMaster(task.Clock()), database)
    farm.master.mq = DeliveringMq()
    data = FakeData()
    farm.master.data = data
    farm.master.scheduler_manager = SimpleNamespace(namedServices={})
    configured = OnDemandHost(farm)
    await configured.configure(OnDemandBuilds(janitor_interval=5, signing_key=None))
    yield configured, data
    await configured.stop()


@pytest_twisted.ensureDeferred
async def test_a_retry_goes_to_the_janitor_and_buildbots_rerun_is_stopped(
    host: tuple[OnDemandHost, FakeData],
) -> None:
    """RETRY marks the job for the janitor with the preemption reason; the rerun is stopped."""
    ondemand, data = host
    jobs = ondemand.jobs
    assert jobs is not None
    mq = ondemand.master.mq
    await jobs.submit(KEY, "s", "{}")
    first = build(1, None)
    data.builds.append(first)
    await mq.deliver("new", first)
    first.update(results=RETRY, state_string="retry lost connection")
    data.properties[1] = {PREEMPTED_PROPERTY: ("b-0 preempted (gce): TRUE", "FarmLatentWorker")}
    await mq.deliver("finished", first)
    job = await jobs.get(KEY)
    assert job is not None
    assert (job.status, job.attempt) == ("retry", 1)
    rerun = build(2, None)
    data.builds.append(rerun)
    await mq.deliver("new", rerun)
    assert data.controls == [("stop", {"reason": "the janitor retries this job as a new attempt"},
                              ("builds", 2))]
    rerun.update(results=SUCCESS)
    await mq.deliver("finished", rerun)
    (attempt,) = await jobs.attempts(KEY)
    assert (attempt["worker"], attempt["build_id"], attempt["result"]) == ("w1", 1, "retry")
    assert attempt["error"] == "build 1 ended retry: b-0 preempted (gce): TRUE"


@pytest_twisted.ensureDeferred
async def test_a_rerun_after_an_unfinished_build_stays_the_same_attempt(
    host: tuple[OnDemandHost, FakeData],
) -> None:
    """A request rerun after a build that never ended (its master died) is not stopped."""
    ondemand, data = host
    jobs = ondemand.jobs
    assert jobs is not None
    await jobs.submit(KEY, "s", "{}")
    data.builds += [build(1, None), build(2, None)]
    await ondemand.master.mq.deliver("new", data.builds[1])
    assert data.controls == []
    (attempt,) = await jobs.attempts(KEY)
    assert (attempt["worker"], attempt["build_id"]) == ("w2", 2)
