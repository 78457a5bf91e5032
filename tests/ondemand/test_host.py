"""OnDemandHost with a fake farm: waiters wake on NOTIFY alone, and time out on the clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task

from buildbot_farm import db
from buildbot_farm.ondemand.config import OnDemandBuilds
from buildbot_farm.ondemand.host import OnDemandHost, pick_artifact
from buildbot_farm.ondemand.store import Job
from buildbot_farm.testing import FakeFarmContext
from tests.harness.twisted_reactor import reactor as real_reactor

KEY = "b" * 64


class FakeConsumer:
    """What ``mq.startConsuming`` returns."""

    def stopConsuming(self) -> None:  # noqa: N802
        """Nothing to stop."""


class FakeMq:
    """An mq that remembers its consumers and never delivers."""

    def __init__(self) -> None:
        self.topics: list[tuple[str | None, ...]] = []

    async def startConsuming(  # noqa: N802
        self, callback: Any, topic: tuple[str | None, ...]
    ) -> FakeConsumer:
        """Record the topic."""
        self.topics.append(topic)
        return FakeConsumer()


class FakeMaster:
    """The parts of a master the host uses: reactor, name, mq."""

    def __init__(self, clock: task.Clock) -> None:
        self.reactor = clock
        self.name = "m1"
        self.mq = FakeMq()


@pytest.fixture
def farm(database: db.Database) -> FakeFarmContext:
    """A fake farm on the test database, with a fake master on a fake clock."""
    return FakeFarmContext(FakeMaster(task.Clock()), database)


@pytest_twisted.async_yield_fixture
async def host(farm: FakeFarmContext) -> AsyncIterator[OnDemandHost]:
    """A configured host in the fake farm."""
    configured = OnDemandHost(farm)
    await configured.configure(
        OnDemandBuilds(compat_timeout=30, janitor_interval=5, signing_key=None)
    )
    yield configured
    await configured.stop()


def done(job: Job) -> bool:
    """A job is done once it succeeded or failed."""
    return job.status in ("succeeded", "failed")


@pytest_twisted.ensureDeferred
async def test_a_waiter_wakes_on_completion_without_the_clock(host: OnDemandHost) -> None:
    """The fake clock never advances, so only the completion's notification can wake it."""
    assert host.jobs is not None
    await host.jobs.submit(KEY, "s", "{}")
    waiting = defer.ensureDeferred(host.wait_for(KEY, 30, done))
    await task.deferLater(real_reactor, 0.1, lambda: None)
    assert not waiting.called
    await host.jobs.finish(KEY, 1, "failure", None, "broken")
    job = await waiting
    assert job is not None
    assert job.status == "failed"


@pytest_twisted.ensureDeferred
async def test_a_waiter_gives_up_at_its_bound(farm: FakeFarmContext, host: OnDemandHost) -> None:
    """With no completion, advancing the clock past the bound answers None."""
    assert host.jobs is not None
    await host.jobs.submit(KEY, "s", "{}")
    waiting = defer.ensureDeferred(host.wait_for(KEY, 30, done))
    clock = farm.master.reactor
    for _ in range(20):
        if clock.getDelayedCalls():
            break
        await task.deferLater(real_reactor, 0.02, lambda: None)
    clock.advance(31)
    assert await waiting is None


@pytest_twisted.ensureDeferred
async def test_the_host_listens_to_build_events_and_runs_a_janitor(
    farm: FakeFarmContext, host: OnDemandHost
) -> None:
    """Configuring subscribes to new and finished builds and adds the janitor task."""
    assert host.jobs is not None
    assert farm.master.mq.topics == [("builds", None, "new"), ("builds", None, "finished")]
    assert farm.periodic == {"ondemand-janitor": 5}


def test_the_artifact_is_the_first_matching_file() -> None:
    """The scheduler's glob picks which published file is the job's artifact."""
    published = [
        {"path": "bin/t/1/notes.txt", "url": "u1", "size": 1, "sha256": "a"},
        {"path": "bin/t/1/tool", "url": "u2", "size": 2, "sha256": "b"},
    ]
    artifact = pick_artifact(published, "*/tool")
    assert artifact is not None
    assert artifact.url == "u2"
    assert pick_artifact(published, "*.exe") is None


@pytest_twisted.ensureDeferred
async def test_a_client_that_hangs_up_stops_the_wait(host: OnDemandHost) -> None:
    """When the request's finish Deferred fires, the waiter answers None and is forgotten."""
    assert host.jobs is not None
    await host.jobs.submit(KEY, "s", "{}")
    gone: defer.Deferred[None] = defer.Deferred()
    waiting = defer.ensureDeferred(host.wait_for(KEY, 30, done, gone))
    await task.deferLater(real_reactor, 0.1, lambda: None)
    gone.errback(ConnectionError("client went away"))
    assert await waiting is None
    await host.jobs.finish(KEY, 1, "failure", None, "late")


@pytest_twisted.ensureDeferred
async def test_the_buildset_of_a_new_attempt_wakes_its_waiter(host: OnDemandHost) -> None:
    """A force form that joins a job created a moment ago is woken by its buildset's record."""
    jobs = host.jobs
    assert jobs is not None
    await jobs.submit(KEY, "s", "{}")

    async def buildset() -> int | None:
        row = await jobs.attempt(KEY, 1)
        return None if row is None else row["buildset_id"]

    waiting = defer.ensureDeferred(host.wait_until(KEY, 30, buildset))
    await task.deferLater(real_reactor, 0.1, lambda: None)
    assert not waiting.called
    await jobs.buildset_added(KEY, 1, 42)
    assert await waiting == 42
    assert await jobs.attempt(KEY, 2) is None
