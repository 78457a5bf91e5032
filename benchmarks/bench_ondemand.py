"""On-demand builds: how soon a held ``/api/compat`` request wakes after its job completes.

Issue 7's target: p50 below 50 ms. A waiter parks in ``OnDemandHost.wait_for`` (what the
compat endpoint does); the job is then completed through a second database connection
on PostgreSQL, as another master would, and through the same one on SQLite, whose
notifications reach only the listeners of one database object. The time runs from the
start of that completing transaction to the waiter's wake-up, so it includes the commit:
an upper bound of the wake-up latency.
On PostgreSQL the wake-up travels by LISTEN/NOTIFY; on SQLite it is in-process.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from buildbot_farm import db
from buildbot_farm.ondemand.config import OnDemandBuilds
from buildbot_farm.ondemand.host import OnDemandHost
from buildbot_farm.ondemand.store import Job, JobTable
from tests.harness.postgres import PostgresCluster
from tests.harness.twisted_reactor import reactor

ROUNDS = 200


class _Consumer:
    def stopConsuming(self) -> None:  # noqa: N802
        """Nothing consumes in the benchmark."""


class _Mq:
    async def startConsuming(self, callback: Any, topic: Any) -> _Consumer:  # noqa: N802
        """No build events in the benchmark."""
        return _Consumer()


class _Master:
    def __init__(self, basedir: str) -> None:
        self.reactor = reactor
        self.name = "bench"
        self.basedir = basedir
        self.mq = _Mq()


class _Farm:
    """The parts of FarmService the host needs, on a real database and the real reactor."""

    def __init__(self, database: db.Database, basedir: str) -> None:
        self.database = database
        self.master = _Master(basedir)

    def add_periodic(self, name: str, interval: float, work: Any) -> None:
        """The janitor does not run in the benchmark."""

    def remove_periodic(self, name: str) -> None:
        """Nothing to remove."""


def _done(job: Job) -> bool:
    return job.status in ("succeeded", "failed")


async def _measure(url: str, basedir: str, separate: bool) -> list[float]:
    waiting_db = await db.connect(url, reactor, basedir=basedir)
    finishing_db = await db.connect(url, reactor, basedir=basedir) if separate else waiting_db
    host = OnDemandHost(_Farm(waiting_db, basedir))
    await host.configure(OnDemandBuilds(signing_key=None))
    finisher = JobTable(finishing_db, reactor.seconds, "other-master")
    latencies = []
    try:
        for n in range(ROUNDS):
            key = f"{n:064x}"
            await finisher.submit(key, "bench", "{}")
            woke: list[float] = []

            def wakes(job: Job | None, woke: list[float] = woke) -> Job | None:
                woke.append(time.perf_counter())
                return job

            waiter = defer.ensureDeferred(host.wait_for(key, 10, _done))
            waiter.addCallback(wakes)
            await task.deferLater(reactor, 0.01, lambda: None)
            started = time.perf_counter()
            await finisher.finish(key, 1, "failure", None, "bench")
            job = await waiter
            assert job is not None, "the waiter timed out"
            latencies.append((woke[0] - started) * 1000)
    finally:
        await host.stop()
        await waiting_db.stop()
        if separate:
            await finishing_db.stop()
    return latencies


async def _run() -> None:
    rows = []
    tmp = tempfile.mkdtemp(prefix="bench-ondemand-")
    Path(tmp).chmod(0o755)  # the postgres user must reach its cluster directory
    try:
        rows.append(("sqlite", await _measure("sqlite:///bench.sqlite", tmp, separate=False)))
        cluster = PostgresCluster(Path(tmp) / "pg")
        cluster.start()
        try:
            rows.append(("postgresql", await _measure(cluster.dsn, tmp, separate=True)))
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"compat wake-up after completion, {ROUNDS} rounds (ms; target p50 < 50)")
    print(f"{'backend':<12}{'p50':>8}{'p95':>8}{'max':>8}")
    for backend, latencies in rows:
        ordered = sorted(latencies)
        p95 = ordered[int(len(ordered) * 0.95) - 1]
        print(f"{backend:<12}{statistics.median(ordered):>8.2f}{p95:>8.2f}{ordered[-1]:>8.2f}")


def main() -> None:
    """Measure on SQLite and on a throwaway PostgreSQL cluster; print the table."""
    task.react(lambda _reactor: defer.ensureDeferred(_run()))
