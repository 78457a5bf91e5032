"""The job table on both backends: deduplication, fencing, notification and the janitor."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, task

from buildbot_farm import db
from buildbot_farm.ondemand.store import CHANNEL, Artifact, JobTable
from tests.harness.twisted_reactor import reactor

KEY = "a" * 64
ARTIFACT = Artifact("bin/tool/1/tool", "http://farm/bin/tool/1/tool", 5, "f" * 64)


class Clock:
    """A settable time source."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


@pytest_twisted.ensureDeferred
async def test_concurrent_submissions_make_one_attempt(database: db.Database) -> None:
    """Ten simultaneous submissions of one key create one job, and only one needs a build."""
    jobs = JobTable(database, Clock(), "m1")
    results = await defer.gatherResults([
        defer.ensureDeferred(jobs.submit(KEY, "s", "{}")) for _ in range(10)
    ])
    assert sum(r.needs_build for r in results) == 1
    assert {r.job.key for r in results} == {KEY}
    assert len(await jobs.attempts(KEY)) == 1


@pytest_twisted.ensureDeferred
async def test_success_records_the_artifact_and_notifies(database: db.Database) -> None:
    """A successful attempt stores the artifact, wakes listeners, and later submits hit it."""
    jobs = JobTable(database, Clock(), "m1")
    heard: list[str] = []
    subscription = await database.listen(CHANNEL, heard.append)
    await jobs.submit(KEY, "s", "{}")
    assert await jobs.started(KEY, 1, 7, "w1")
    assert await jobs.finish(KEY, 1, "success", ARTIFACT, None)
    for _ in range(50):
        if heard:
            break
        await pause(0.05)
    await subscription.cancel()
    assert heard == [KEY]
    again = await jobs.submit(KEY, "s", "{}")
    assert not again.needs_build
    assert again.job.status == "succeeded"
    assert again.job.artifact == ARTIFACT
    [attempt] = await jobs.attempts(KEY)
    assert (attempt["worker"], attempt["build_id"], attempt["result"]) == ("w1", 7, "success")


@pytest_twisted.ensureDeferred
async def test_a_late_attempt_is_fenced_off(database: db.Database) -> None:
    """After the janitor requeued a job, the old attempt's result changes nothing."""
    clock = Clock()
    jobs = JobTable(database, clock, "m1")
    await jobs.submit(KEY, "s", "{}")
    clock.now += 100
    [requeued] = await jobs.rescue(max_attempts=3, stale_before=clock.now - 10)
    assert requeued.attempt == 2
    assert not await jobs.finish(KEY, 1, "success", ARTIFACT, None)
    job = await jobs.get(KEY)
    assert job is not None
    assert (job.status, job.attempt, job.artifact) == ("queued", 2, None)
    assert await jobs.finish(KEY, 2, "success", ARTIFACT, None)


@pytest_twisted.ensureDeferred
async def test_the_janitor_retries_exceptions_up_to_max_attempts(database: db.Database) -> None:
    """EXCEPTION results are retried; at max_attempts the job fails with the reason."""
    clock = Clock()
    jobs = JobTable(database, clock, "m1")
    await jobs.submit(KEY, "s", "{}")
    assert await jobs.finish(KEY, 1, "exception", None, "boom")
    assert [j.attempt for j in await jobs.rescue(2, clock.now - 10)] == [2]
    assert await jobs.finish(KEY, 2, "exception", None, "boom")
    assert await jobs.rescue(2, clock.now - 10) == []
    job = await jobs.get(KEY)
    assert job is not None
    assert job.status == "failed"
    assert job.error == "gave up after 2 attempt(s): the build ended EXCEPTION or RETRY"
    results = [a["result"] for a in await jobs.attempts(KEY)]
    assert results == ["exception", "exception"]


@pytest_twisted.ensureDeferred
async def test_a_failed_job_is_rebuilt_when_asked_again(database: db.Database) -> None:
    """A FAILURE is final for the attempt; a new request starts the next attempt."""
    jobs = JobTable(database, Clock(), "m1")
    await jobs.submit(KEY, "s", "{}")
    assert await jobs.finish(KEY, 1, "failure", None, "compile error")
    again = await jobs.submit(KEY, "s", "{}")
    assert again.needs_build
    assert again.job.attempt == 2


@pytest_twisted.ensureDeferred
async def test_success_without_an_artifact_is_a_failure(database: db.Database) -> None:
    """A green build that published nothing fails the job, saying so."""
    jobs = JobTable(database, Clock(), "m1")
    await jobs.submit(KEY, "s", "{}")
    assert await jobs.finish(KEY, 1, "success", None, None)
    job = await jobs.get(KEY)
    assert job is not None
    assert job.status == "failed"
    assert job.error == "the build stored no artifact"


def pause(seconds: float) -> defer.Deferred[None]:
    """A Deferred that fires after ``seconds`` on the test reactor."""
    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_pending_buildset_keeps_its_job_fresh(database: db.Database) -> None:
    """Touching by pending buildset spares that job; a job whose buildset is done goes stale."""
    clock = Clock()
    jobs = JobTable(database, clock, "m1")
    other = "c" * 64
    await jobs.submit(KEY, "s", "{}")
    await jobs.submit(other, "s", "{}")
    await jobs.buildset_added(KEY, 1, 11)
    await jobs.buildset_added(other, 1, 12)
    clock.now += 100
    assert await jobs.touch([11]) == 1
    assert await jobs.touch([]) == 0
    requeued = await jobs.rescue(max_attempts=3, stale_before=clock.now - 10)
    assert [j.key for j in requeued] == [other]
    [first, second] = await jobs.attempts(other)
    assert (first["result"], first["error"]) == (
        "abandoned", "no news of its build within stale_after")
    assert second["result"] is None


@pytest_twisted.ensureDeferred
async def test_an_expired_artifact_is_rebuilt_once(database: db.Database) -> None:
    """Expiring a succeeded job is fenced by attempt, and the next submit starts attempt 2."""
    jobs = JobTable(database, Clock(), "m1")
    await jobs.submit(KEY, "s", "{}")
    await jobs.finish(KEY, 1, "success", ARTIFACT, None)
    assert await jobs.expire(KEY, 1, "gone")
    assert not await jobs.expire(KEY, 1, "gone")
    again = await jobs.submit(KEY, "s", "{}")
    assert again.needs_build
    assert again.job.attempt == 2
    assert not (await jobs.submit(KEY, "s", "{}")).needs_build


@pytest_twisted.ensureDeferred
async def test_attempts_of_several_jobs_are_read_at_once(database: db.Database) -> None:
    """attempts_of answers each key's attempts, oldest first, as attempts() does one by one,
    and an empty list for a key with none."""
    clock = Clock()
    jobs = JobTable(database, clock, "m1")
    other = "b" * 64
    for key in (KEY, other):
        await jobs.submit(key, "s", "{}")
        await jobs.started(key, 1, 7, "w1")
        await jobs.finish(key, 1, "failure", None, "broke")
        clock.now += 1
        await jobs.submit(key, "s", "{}")
    found = await jobs.attempts_of([other, KEY, "c" * 64])
    assert found == {other: await jobs.attempts(other), KEY: await jobs.attempts(KEY),
                     "c" * 64: []}
    assert [a["attempt"] for a in found[KEY]] == [1, 2]
    assert set(found[KEY][0]) == {"attempt", "master", "buildset_id", "build_id", "worker",
                                  "result", "error", "started_at", "finished_at"}
    assert await jobs.attempts_of([]) == {}


@pytest_twisted.ensureDeferred
async def test_touch_takes_more_buildsets_than_a_statement_takes_parameters(
    database: db.Database,
) -> None:
    """A heartbeat with 70,000 pending buildsets (more parameters than PostgreSQL, or SQLite
    by default, takes in one statement) touches the jobs among them, each once."""
    clock = Clock()
    jobs = JobTable(database, clock, "m1")
    keys = ["d" * 63 + str(n) for n in range(3)]
    for n, key in enumerate(keys):
        await jobs.submit(key, "s", "{}")
        await jobs.buildset_added(key, 1, 10_000 + n * 25_000)  # in different chunks
    pending = list(range(1, 70_001))
    assert await jobs.touch(pending) == 3
