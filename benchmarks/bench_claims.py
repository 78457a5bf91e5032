"""On-demand jobs on PostgreSQL: claims per second by 16 concurrent claimers, against pgbench.

Issue 16's target: claims through the farm's asynchronous ``Database`` at no less than 0.7x
what ``pgbench`` gets from the same claim on the same server.

The job table has no per-job claim of its own (Buildbot claims the build requests; the
janitor claims jobs to requeue in one batch), so the claim measured is the pattern the
farm's claims share: take the oldest queued row with the dialect's ``FOR UPDATE SKIP
LOCKED`` and bump its attempt, in one statement (``claim_sql``). It runs in two forms:
alone (``database.fetchall_prepared``: autocommit, one round trip) and inside
``database.transaction`` (BEGIN sent with the statement, then COMMIT: two round trips),
each with pools of 4 (the default ``db_pool_size``) and 16 connections. Each run starts
from ``JOBS`` queued jobs; 16 claimers claim until the queue is empty. A double claim
would leave a job at an attempt above 2 (and, in our runs, return a key twice), so every
run, pgbench's too, is checked for exactly one claim per job.

The farm runs the claim as a prepared statement (``fetchall_prepared``) over the extended
protocol: each connection prepares it once (a Parse, sent with its first run), then sends a
Bind, an Execute and a Sync per claim, in libpq's pipeline mode: a connection sends the next
claim without waiting for the answer to the one before (``_pg_connection``). pgbench's
``-M prepared`` sends the same messages per claim (Parse once per client, then Bind and
Execute), each of its 16 clients waiting for its answer, as pgbench does. A second
reference row has pgbench PREPARE on each client's first transaction and EXECUTE the text
over the simple protocol (``-M simple``); the ratio is taken against the faster of the two,
so neither flatters the farm. A third, in the statement form, pipelines as the farm does
(``PIPELINED``). (Unprepared, the server parses and plans every claim: about twice its CPU
per claim.)
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task

from buildbot_farm import db
from buildbot_farm.db._api import qmark_to_numbered
from tests.harness.postgres import PostgresCluster
from tests.harness.twisted_reactor import reactor

JOBS = 20_000
CLAIMERS = 16
POOL_SIZES = (4, 16)
RATIO_TARGET = 0.7
PREPARED_NAME = "bench_claim"
PGBENCH = "/usr/bin/pgbench"
ROUNDS = 2
# pgbench pipelining as the farm's pool of 4 does: 4 clients, each sending 4 claims before
# it reads their answers. pgbench 15 ends a pipeline with one Sync, so its 4 claims commit
# together: less work than the farm's, whose claims each commit.
PIPELINED = (4, 4)
PIPELINED_MODE = "pipelined"
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


async def _claim_all(
    database: db.Database, in_transaction: bool
) -> tuple[float, int, float]:
    """16 claimers through ``database`` until the queue is empty.

    Returns the seconds it took, the claims made, and this process's CPU seconds.

    Each claim is the one prepared statement alone (``database.fetchall_prepared``), or
    that statement inside ``database.transaction`` as a claim that does more work would be.
    """
    sql = claim_sql(database.dialect)
    claimed: list[str] = []

    async def claim_in(txn: db.Transaction) -> list[db.Row]:
        return await txn.fetchall_prepared(PREPARED_NAME, sql, (reactor.seconds(),))

    async def claimer() -> None:
        while True:
            if in_transaction:
                rows = await database.transaction(claim_in)
            else:
                rows = await database.fetchall_prepared(PREPARED_NAME, sql, (reactor.seconds(),))
            if not rows:
                return
            claimed.append(str(rows[0]["build_key"]))

    started, cpu = time.perf_counter(), _cpu_seconds()
    await defer.gatherResults(
        [defer.ensureDeferred(claimer()) for _ in range(CLAIMERS)], consumeErrors=True
    )
    elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    if len(set(claimed)) != len(claimed):
        raise AssertionError(f"{len(claimed) - len(set(claimed))} keys were claimed twice")
    return elapsed, len(claimed), cpu


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pgbench(dsn: str, script: Path, mode: str, clients: int = CLAIMERS, per_run: int = 1) -> float:
    """Run ``script`` (``per_run`` claims) with pgbench in query ``mode``, ``clients`` clients
    sharing ``JOBS`` claims; claims per second."""
    done = subprocess.run(
        [PGBENCH, "--no-vacuum", "-n", "-c", str(clients), "-j", "2", "-M", mode,
         "-t", str(JOBS // (clients * per_run)), "-D", f"now={time.time():.3f}",
         "-D", "prepared=0", "-f", str(script), dsn],
        capture_output=True, text=True, check=False,
    )
    found = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"pgbench failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return float(found.group(1)) * per_run


def _pgbench_scripts(dialect: db.Dialect, tmp: Path, in_transaction: bool) -> dict[str, Path]:
    """The claim as pgbench runs it, by query mode.

    ``simple``: PREPARE on the client's first transaction (the text ``qmark_to_numbered``
    makes, as the farm prepares it), then ``EXECUTE`` with ``:now``, as the farm sends it.
    ``prepared``: the statement itself, ``?`` turned into ``:now``, which pgbench prepares.
    ``pipelined`` (alone only): that statement ``PIPELINED[1]`` times in one pipeline.
    """
    numbered, _ = qmark_to_numbered(claim_sql(dialect))
    executes = (
        "\\if :prepared = 0\n"
        f"PREPARE {PREPARED_NAME} AS {numbered};\n"
        "\\set prepared 1\n"
        "\\endif\n"
        f"EXECUTE {PREPARED_NAME}(:now);\n"
    )
    statement = claim_sql(dialect).replace("?", ":now") + ";\n"
    scripts = {}
    for mode, claim in (("simple", executes), ("prepared", statement)):
        path = tmp / f"claim-{mode}.sql"
        path.write_text(f"BEGIN;\n{claim}COMMIT;\n" if in_transaction else claim)
        scripts[mode] = path
    if not in_transaction:
        path = tmp / "claim-pipelined.sql"
        each = f"BEGIN;\n{statement}COMMIT;\n"  # a transaction each, as the farm's claims
        path.write_text(f"\\startpipeline\n{each * PIPELINED[1]}\\endpipeline\n")
        scripts[PIPELINED_MODE] = path
    return scripts


async def _run() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-claims-"))
    tmp.chmod(0o755)  # the postgres user must reach its cluster directory
    cluster = PostgresCluster(tmp / "pg")
    rows: list[tuple[str, str, float, float | None]] = []
    databases: dict[int, db.Database] = {}
    try:
        cluster.start()
        dsn = cluster.create_database("claims")
        for pool_size in (1, *POOL_SIZES):
            databases[pool_size] = await db.connect(dsn, reactor, pool_size=pool_size)
        for form, in_transaction in FORMS:
            scripts = _pgbench_scripts(databases[1].dialect, tmp, in_transaction)
            for _ in range(ROUNDS):  # interleaved: the machine's load changes as it runs
                for pool_size in POOL_SIZES:
                    await _fill(databases[1])
                    elapsed, claims, cpu = await _claim_all(databases[pool_size], in_transaction)
                    await _check_claimed_once(databases[1], f"farm pool {pool_size}")
                    rows.append((form, f"farm, pool of {pool_size}", claims / elapsed,
                                 cpu / claims))
                for mode, script in scripts.items():
                    await _fill(databases[1])
                    if mode == PIPELINED_MODE:
                        name = "pgbench pipelined {}x{}".format(*PIPELINED)
                        rate = _pgbench(dsn, script, "prepared", *PIPELINED)
                    else:
                        name, rate = f"pgbench -M {mode}", _pgbench(dsn, script, mode)
                    rows.append((form, name, rate, None))
                    await _check_claimed_once(databases[1], name)
    finally:
        for database in databases.values():
            await database.stop()
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    _print(rows)


def _print(rows: list[tuple[str, str, float, float | None]]) -> None:
    print(f"{JOBS} jobs, {CLAIMERS} concurrent claimers, every job claimed exactly once")
    print(f"target: the farm >= {RATIO_TARGET}x the best pgbench run of the same form"
          " (pgbench -c 16 -j 2; prepared: Bind/Execute as the farm; simple: PREPARE + EXECUTE);"
          " and, for information, against the best pipelined pgbench run")
    print(f"{'form':<14}{'claimer':<24}{'claims/s':>10}{'vs pgbench':>12}{'vs pipelined':>14}"
          f"{'client CPU/claim':>18}")
    for form, _ in FORMS:
        ours = [(name, rate) for f, name, rate, _ in rows if f == form]
        best = max(rate for name, rate in ours if name.startswith("pgbench -M"))
        piped = [rate for name, rate in ours if name.startswith("pgbench pipelined")]
        for f, name, rate, cpu in rows:
            if f == form:
                per_claim = "" if cpu is None else f"{cpu * 1e6:.0f} us"
                vs_piped = f"{rate / max(piped):.2f}x" if piped else ""
                print(f"{form:<14}{name:<24}{rate:>10.0f}{rate / best:>11.2f}x{vs_piped:>14}"
                      f"{per_claim:>18}")


def main() -> None:
    """Measure on a throwaway PostgreSQL cluster; print the table."""
    task.react(lambda _reactor: defer.ensureDeferred(_run()))
