"""Build records: what the hash chain adds to a record insert, SQLite and PostgreSQL.

Issue 14's target: the chain adds less than 10% to an insert. "before" is the insert as the
farm did it up to migration 0005 (one INSERT, on a database at schema 5, without 0006's
triggers); "prepared" is that INSERT prepared once per connection on PostgreSQL, as the
farm's insert now is (saving the parsing and planning is not the chain's doing, so "vs
prepared" is what the chain itself adds; SQLite's statement cache prepares both already);
"after" is :meth:`RecordStore.insert` now (migration 0007: one INSERT of the record carrying
its chain entry, computed from the head the farm keeps in memory, with 0006's and 0007's
triggers and guards). All are the same work for the client: the record's document made,
one statement, one round trip, on the same kind of pool. Inserts run one at a time, as a
master makes them, after a warm-up, in batches of 25 of one kind in a row (a master inserts
into its one database one record after another; alternating insert by insert would leave the
caches warm for the two kinds that share the schema-5 database and cold for the other); the
three kinds take turns batch by batch, in an order that rotates, so load from elsewhere on
the machine falls on all alike.

Two figures each: the median wall-clock time of an insert, and the mean CPU time it takes
(this process, plus the PostgreSQL backend that ran it, from ``/proc/PID/schedstat``). The
machine is shared: the wall clock counts the time other processes had the CPU, the CPU time
does not, so it is the steadier measure of the work the chain adds.
Provenance signing is left out of both (it is measured alone: it is not the chain).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer, task

from buildbot_farm import db
from buildbot_farm.records.model import Binary, BuildRecord
from buildbot_farm.records.provenance import Signer, signed_provenance
from buildbot_farm.records.store import RecordStore
from tests.harness.postgres import PostgresCluster

INSERTS = 3000
BATCH = 25  # inserts of one kind in a row, as a master makes them on its one database
WARM_UP = 300
OLD_INSERT = (
    "INSERT INTO farm_records (name, version, timestamp, result, source_commit, body,"
    " recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def _record(n: int) -> BuildRecord:
    return BuildRecord(
        name="bench", version=str(n), timestamp=1.7e9 + n, built_on="host-1",
        source_url=f"https://github.com/o/bench/commit/{n:040x}",
        source={"repository": "https://github.com/o/bench", "commit": f"{n:040x}"},
        environment={"os": "Debian 12", "arch": "amd64"},
        binaries=(Binary(f"https://dl/bench-{n}", 1024, f"{n:064x}"),),
    )


async def _open(reactor: Any, url: str, schema: int) -> db.Database:
    database = db.open_database(db.parse_db_url(url), reactor)
    await database.start()
    steps = db.load_migrations(database.dialect.name)[:schema]
    await db.migrate(database, now=reactor.seconds, migrations=steps)
    return database


class _Meter:
    """Wall-clock and CPU time of one insert after another, per kind of insert."""

    def __init__(self, backends: list[int]) -> None:
        self._backends = backends  # PostgreSQL backend pids; none for SQLite
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    def _server_cpu(self) -> float:
        total = 0
        for pid in self._backends:
            with open(f"/proc/{pid}/schedstat") as stat:
                total += int(stat.read().split()[0])
        return total / 1e9

    async def time(self, kind: str, insert: Awaitable[object]) -> None:
        """Run ``insert`` and note its times under ``kind``."""
        server = self._server_cpu()
        cpu, wall = time.process_time(), time.perf_counter()
        await insert
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.wall.setdefault(kind, []).append(wall)
        self.cpu.setdefault(kind, []).append(cpu + self._server_cpu() - server)


async def _before(database: db.Database, r: BuildRecord, prepared: bool = False) -> None:
    """One insert of ``r`` as RecordStore.insert made it before 0006 (or it, prepared)."""
    values = (r.name, r.version, r.timestamp, r.result, r.commit, r.document().decode(), 0.0)
    if prepared:
        await database.execute_prepared("bench_old_insert", OLD_INSERT, values)
    else:
        await database.execute(OLD_INSERT, values)


async def _backend_pids(database: db.Database) -> set[int]:
    """The pids of the backends of ``database``'s pool (PostgreSQL), as many as it opened."""
    found: set[int] = set()
    for _ in range(20):  # the pool hands out its connections in turn
        row = await database.fetchone("SELECT pg_backend_pid() AS pid")
        assert row is not None
        found.add(int(row["pid"]))
    return found


async def _backend(reactor: Any, url_before: str, url_after: str) -> dict[str, tuple[float, float]]:
    """(median wall, mean CPU) seconds per insert of each kind on one backend, interleaved."""
    old = await _open(reactor, url_before, 5)
    new = await _open(reactor, url_after, len(db.load_migrations(old.dialect.name)))
    store = RecordStore(new)
    pids: list[int] = []
    if old.dialect.name == "postgresql":
        pids = sorted(await _backend_pids(old) | await _backend_pids(new))
    # Each kind inserts its own versions (before and prepared share a table).
    kinds: dict[str, tuple[int, Callable[[BuildRecord], Awaitable[object]]]] = {
        "before": (0, lambda r: _before(old, r)),
        "prepared": (10**6, lambda r: _before(old, r, prepared=True)),
        "after": (0, lambda r: store.insert(r, 0.0)),
    }
    names = list(kinds)
    for n in range(WARM_UP):
        for offset, insert in kinds.values():
            await insert(_record(10**7 + offset + n))
    meter = _Meter(pids)
    for batch in range(INSERTS // BATCH):
        for name in names[batch % 3:] + names[:batch % 3]:
            offset, insert = kinds[name]
            for n in range(batch * BATCH, (batch + 1) * BATCH):
                record = _record(offset + n)  # made before the clocks start, for every kind
                await meter.time(name, insert(record))
    await old.stop()
    await new.stop()
    return {
        name: (statistics.median(meter.wall[name]), statistics.fmean(meter.cpu[name]))
        for name in names
    }


def _signing() -> float:
    signer = Signer(Ed25519PrivateKey.generate())
    start = time.perf_counter()
    for n in range(WARM_UP):
        signed_provenance(signer, _record(n), "http://bench/")
    return (time.perf_counter() - start) / WARM_UP


async def _run(reactor: Any) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="farm-bench-insert-"))
    pg_dir = Path(tempfile.mkdtemp(prefix="farm-bench-pg-"))
    cluster = PostgresCluster(pg_dir)
    cluster.start()
    try:
        results = {
            "SQLite": await _backend(
                reactor, f"sqlite:///{workdir}/before.sqlite", f"sqlite:///{workdir}/after.sqlite"
            ),
            "PostgreSQL": await _backend(
                reactor, cluster.create_database("before"), cluster.create_database("after")
            ),
        }
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(pg_dir, ignore_errors=True)
    print(f"record insert, one at a time, {INSERTS} of each kind (in turns of {BATCH}, rotating)")
    print(f"{'backend':<12}{'figure':<12}{'before us':>10}{'prepared us':>12}{'after us':>10}"
          f"{'added':>8}{'vs prepared':>13}")
    for name, figures in results.items():
        for column, label in ((0, "wall median"), (1, "CPU mean")):
            before, prepared, after = (figures[k][column] for k in ("before", "prepared", "after"))
            print(f"{name:<12}{label:<12}{before * 1e6:>10.0f}{prepared * 1e6:>12.0f}"
                  f"{after * 1e6:>10.0f}{(after - before) / before * 100:>7.1f}%"
                  f"{(after - prepared) / prepared * 100:>12.1f}%")
    signing = _signing()
    print(f"(provenance signed at insert, not in either column: {signing * 1e6:.0f} us)")
    print(json.dumps({
        backend: {f"{kind}_{figure}_us": figures[kind][column] * 1e6
                  for kind in figures for column, figure in ((0, "wall"), (1, "cpu"))}
        for backend, figures in results.items()
    }))


def main() -> None:
    """Measure and print the table."""
    task.react(lambda reactor: defer.ensureDeferred(_run(reactor)))
