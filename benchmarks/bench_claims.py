"""On-demand jobs on PostgreSQL: claims per second by 16 concurrent claimers, against pgbench.

Issue 7's target: claims through the farm's asynchronous ``Database`` (txpostgres) at no
less than 0.5x what ``pgbench`` gets from the same claim on the same server.

The job table has no per-job claim of its own (Buildbot claims the build requests; the
janitor claims jobs to requeue in one batch), so the claim measured is the pattern the
farm's claims share: take the oldest queued row with the dialect's ``FOR UPDATE SKIP
LOCKED`` and bump its attempt, in one statement (``claim_sql``). It runs in two forms:
alone (``database.fetchone``: autocommit, one round trip) and inside
``database.transaction`` (BEGIN, statement, COMMIT: three), each with pools of 4 (the
default ``db_pool_size``) and 16 connections. Each run starts from ``JOBS`` queued jobs;
16 claimers claim until the queue is empty. A double claim would leave a job at an
attempt above 2 (and, in our runs, return a key twice), so every run, pgbench's too, is
checked for exactly one claim per job. pgbench runs the very text our code sends (made
from ``claim_sql``, the placeholder turned into a pgbench variable), in the same form.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, reactor, task

from buildbot_farm import db
from buildbot_farm.db._api import qmark_to_pyformat
from tests.harness.postgres import PostgresCluster

JOBS = 20_000
CLAIMERS = 16
POOL_SIZES = (4, 16)
RATIO_TARGET = 0.5
PGBENCH = "/usr/bin/pgbench"
ROUNDS = 2
# (name, whether the claim runs inside BEGIN ... COMMIT)
FORMS = (("statement", False), ("transaction", True))


def claim_sql(dialect: db.Dialect) -> str:
    """The claim: the oldest queued job becomes running at a new attempt; returns its key."""
    return (
        "UPDATE farm_ondemand_jobs SET status = 'running', attempt = attempt + 1,"
        " updated_at = ? WHERE build_key = (SELECT build_key FROM farm_ondemand_jobs"
        " WHERE status = 'queued' ORDER BY updated_at LIMIT 1" + dialect.skip_locked + ")"
        " RETURNING build_key"
    )


async def _fill(database: db.Database) -> None:
    """Empty the job table and queue ``JOBS`` jobs at attempt 1."""
    await database.execute("DELETE FROM farm_ondemand_jobs")
    await database.execute(
        "INSERT INTO farm_ondemand_jobs (build_key, scheduler, parameters, status, attempt,"
        " created_at, updated_at) SELECT md5(n::text), 'bench', '{}', 'queued', 1, n, n"
        " FROM generate_series(1, ?) AS n",
        (JOBS,),
    )


async def _check_claimed_once(database: db.Database, who: str) -> None:
    """Fail unless every job was claimed exactly once (attempt 1 -> 2, none left queued)."""
    row = await database.fetchone(
        "SELECT COUNT(*) AS jobs, SUM(CASE WHEN attempt = 2 AND status = 'running'"
        " THEN 1 ELSE 0 END) AS once FROM farm_ondemand_jobs"
    )
    assert row is not None
    if (row["jobs"], row["once"]) != (JOBS, JOBS):
        raise AssertionError(
            f"{who}: {row['once']} of {row['jobs']} jobs were claimed exactly once"
        )


async def _claim_all(database: db.Database, in_transaction: bool) -> tuple[float, int]:
    """16 claimers through ``database`` until the queue is empty; (seconds, claims).

    Each claim is the one statement alone (``database.fetchone``), or that statement
    inside ``database.transaction`` as a claim that does more work would be.
    """
    sql = claim_sql(database.dialect)
    claimed: list[str] = []

    async def claim_in(txn: db.Transaction) -> db.Row | None:
        return await txn.fetchone(sql, (reactor.seconds(),))

    async def claimer() -> None:
        while True:
            if in_transaction:
                row = await database.transaction(claim_in)
            else:
                row = await database.fetchone(sql, (reactor.seconds(),))
            if row is None:
                return
            claimed.append(str(row["build_key"]))

    started = time.perf_counter()
    await defer.gatherResults(
        [defer.ensureDeferred(claimer()) for _ in range(CLAIMERS)], consumeErrors=True
    )
    elapsed = time.perf_counter() - started
    if len(set(claimed)) != len(claimed):
        raise AssertionError(f"{len(claimed) - len(set(claimed))} keys were claimed twice")
    return elapsed, len(claimed)


def _pgbench(dsn: str, script: Path) -> float:
    """Run ``script`` with pgbench, 16 clients sharing ``JOBS`` claims; its tps."""
    done = subprocess.run(
        [PGBENCH, "--no-vacuum", "-n", "-c", str(CLAIMERS), "-j", "2",
         "-t", str(JOBS // CLAIMERS), "-D", f"now={time.time():.3f}", "-f", str(script), dsn],
        capture_output=True, text=True, check=False,
    )
    found = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"pgbench failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return float(found.group(1))


def _pgbench_script(dialect: db.Dialect, path: Path, in_transaction: bool) -> Path:
    """The claim as pgbench runs it: the same text, ``%s`` turned into ``:now``."""
    statement = qmark_to_pyformat(claim_sql(dialect)).replace("%%", "%").replace("%s", ":now")
    path.write_text(f"BEGIN;\n{statement};\nCOMMIT;\n" if in_transaction else f"{statement};\n")
    return path


async def _run() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-claims-"))
    tmp.chmod(0o755)  # the postgres user must reach its cluster directory
    cluster = PostgresCluster(tmp / "pg")
    rows: list[tuple[str, str, float]] = []
    try:
        cluster.start()
        dsn = cluster.create_database("claims")
        for form, in_transaction in FORMS:
            for pool_size in POOL_SIZES:
                database = await db.connect(dsn, reactor, pool_size=pool_size)
                try:
                    for _ in range(ROUNDS):
                        await _fill(database)
                        elapsed, claims = await _claim_all(database, in_transaction)
                        await _check_claimed_once(database, f"txpostgres pool {pool_size}")
                        rows.append((form, f"txpostgres, pool of {pool_size}", claims / elapsed))
                finally:
                    await database.stop()
            database = await db.connect(dsn, reactor, pool_size=1)
            try:
                script = _pgbench_script(database.dialect, tmp / "claim.sql", in_transaction)
                for _ in range(ROUNDS):
                    await _fill(database)
                    rows.append((form, "pgbench -c 16 -j 2", _pgbench(dsn, script)))
                    await _check_claimed_once(database, "pgbench")
            finally:
                await database.stop()
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    _print(rows)


def _print(rows: list[tuple[str, str, float]]) -> None:
    print(f"{JOBS} jobs, {CLAIMERS} concurrent claimers, every job claimed exactly once")
    print(f"target: txpostgres >= {RATIO_TARGET}x the best pgbench run of the same form")
    print(f"{'form':<14}{'claimer':<28}{'claims/s':>10}{'vs pgbench':>12}")
    for form, _ in FORMS:
        best = max(rate for f, name, rate in rows if f == form and name.startswith("pgbench"))
        for name, rate in ((name, rate) for f, name, rate in rows if f == form):
            print(f"{form:<14}{name:<28}{rate:>10.0f}{rate / best:>11.2f}x")


def main() -> None:
    """Measure on a throwaway PostgreSQL cluster; print the table."""
    task.react(lambda _reactor: defer.ensureDeferred(_run()))
