"""Build records: what the hash chain adds to a record insert, SQLite and PostgreSQL.

Issue 14's target: the chain adds less than 10% to an insert. "before" is the insert as the
farm did it up to migration 0005 (one INSERT, on a database at schema 5, without 0006's
triggers); "prepared" is that INSERT prepared once per connection on PostgreSQL, as the
farm's insert now is (saving the parsing and planning is not the chain's doing, so "vs
prepared" is what the chain itself adds; SQLite's statement cache prepares both already);
"after" is :meth:`RecordStore.insert` now (migration 0007: one INSERT of the record carrying
its chain entry, computed from the head the farm keeps in memory, with 0006's and 0007's
triggers and guards). All are the same work for the client: one statement, one round trip,
on the same pool. Inserts run one at a time, as a master makes them, after a warm-up; the
three alternate insert by insert (so load from elsewhere on the machine falls on all alike),
and each figure is the median.
Provenance signing is left out of both (it is measured alone: it is not the chain).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
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


async def _before(database: db.Database, n: int, prepared: bool = False) -> float:
    """Seconds of one insert as RecordStore.insert made it before 0006 (or it, prepared)."""
    r = _record(n)
    start = time.perf_counter()
    values = (r.name, r.version, r.timestamp, r.result, r.commit, r.document().decode(), 0.0)
    if prepared:
        await database.execute_prepared("bench_old_insert", OLD_INSERT, values)
    else:
        await database.execute(OLD_INSERT, values)
    return time.perf_counter() - start


async def _after(store: RecordStore, n: int) -> float:
    """Seconds of one insert now (the record and its chain entry)."""
    record = _record(n)
    start = time.perf_counter()
    await store.insert(record, 0.0)
    return time.perf_counter() - start


async def _backend(
    reactor: Any, url_before: str, url_after: str
) -> tuple[float, float, float]:
    """Median seconds per insert (before, before prepared, after) on one backend, interleaved."""
    old = await _open(reactor, url_before, 5)
    new = await _open(reactor, url_after, len(db.load_migrations(old.dialect.name)))
    store = RecordStore(new)
    for n in range(WARM_UP):
        await _before(old, 10**7 + n)
        await _before(old, 2 * 10**7 + n, prepared=True)
        await _after(store, 10**7 + n)
    befores, prepareds, afters = [], [], []
    for n in range(INSERTS):
        befores.append(await _before(old, n))
        prepareds.append(await _before(old, 10**6 + n, prepared=True))
        afters.append(await _after(store, n))
    await old.stop()
    await new.stop()
    return statistics.median(befores), statistics.median(prepareds), statistics.median(afters)


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
    print(f"record insert, one at a time, median of {INSERTS} (before and after interleaved)")
    print(f"{'backend':<12}{'before us':>10}{'prepared us':>12}{'after us':>10}"
          f"{'added':>8}{'vs prepared':>13}")
    for name, (before, prepared, after) in results.items():
        added = (after - before) / before * 100
        added_prepared = (after - prepared) / prepared * 100
        print(f"{name:<12}{before * 1e6:>10.0f}{prepared * 1e6:>12.0f}{after * 1e6:>10.0f}"
              f"{added:>7.1f}%{added_prepared:>12.1f}%")
    signing = _signing()
    print(f"(provenance signed at insert, not in either column: {signing * 1e6:.0f} us)")
    print(json.dumps({
        k: {"before_us": v[0] * 1e6, "before_prepared_us": v[1] * 1e6, "after_us": v[2] * 1e6}
        for k, v in results.items()
    }))


def main() -> None:
    """Measure and print the table."""
    task.react(lambda reactor: defer.ensureDeferred(_run(reactor)))
