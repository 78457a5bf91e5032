"""Cost growth: records GET, artifacts GET and lease create with 1k, 10k and 100k rows.

Each figure is measured with 1,000, 10,000 and 100,000 rows in the table it reads, and
printed with its ratio to the figure at 1,000 rows: the reference of a growth table is the
same work on the same machine with a hundredth of the rows. Everything runs on loopback.
The servers of all sizes run at once and the GETs take the sizes in turn, ``ROUNDS``
times; the best round of each is printed (the machine is shared: run it more than once).

* **records GET**: ``tests.records.server`` (the records API as a master serves it) on
  SQLite and on PostgreSQL, with N chained records inserted in bulk as ``bench_records``
  does; ``wrk`` (2 threads, 32 connections, 3 s) asks for a random one of the N on each
  request: req/s and p99.
* **artifacts GET**: the repository (SQLite index) with N more files in its index serves
  one 1 KiB file to ``wrk`` (1 thread, 8 connections, 3 s): req/s, p99, how long opening
  the repository took and its RSS after.
* **lease create**: a coordinator (process buildlets, SQLite and PostgreSQL) whose
  database holds N live leases of other users on other masters sharing it
  (``farm_buildlets`` rows, half of each of its two types: what its queries pass over)
  and N name counters (``farm_buildlet_numbers``: what ended leases leave behind, since a
  destroyed buildlet's row is deleted); 20 creates of each type through the coordinator's
  HTTP API, p50 in ms: ``warm`` (a warm pool of one, refilled before each create, not
  timed) hands over a running buildlet; ``cold`` starts the buildlet's agent process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import bench_records
from benchmarks.bench_artifacts import curl_seconds, rss_kib, wrk
from benchmarks.bench_leases import lease_latencies, percentile, run_on_reactor, start_bench
from buildbot_farm import db
from buildbot_farm.leases.providers import ProcessProvider
from tests.harness.ports import free_port
from tests.harness.postgres import PostgresCluster
from tests.harness.twisted_reactor import reactor

SIZES = (1_000, 10_000, 100_000)
ROUNDS = 3
RECORDS_SECONDS = 3
ARTIFACTS_SECONDS = 3
# N live leases of other users and masters, and N name counters, on both backends.
FILL_LEASES = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
    " INSERT INTO farm_buildlets (name, type, provider, state, owner, url, secret, handle,"
    " coordinator, created_at, leased_at, renewed_at, expires_at)"
    " SELECT 'user-' || i || '-any-1', CASE WHEN i % 2 = 0 THEN 'warm' ELSE 'cold' END,"
    " 'process', 'leased', 'user-' || i,"
    " 'http://127.0.0.1:9', 'secret', 'handle', 'master-' || (i % 10), i, i, i, 1e12 FROM n"
)
FILL_NUMBERS = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
    " INSERT INTO farm_buildlet_numbers (owner, type, next_number)"
    " SELECT 'user-' || i, CASE WHEN i % 2 = 0 THEN 'warm' ELSE 'cold' END, 2 FROM n"
)
Figures = dict[str, dict[int, float]]


def start_records(url: str, workdir: Path, count: int) -> tuple[subprocess.Popen[bytes], str]:
    """A records server at ``url`` holding ``count`` records; the process and the URL that
    ``LUA`` (random GETs over the ``count``) is run against."""
    port_file = workdir / f"records-port-{count}-{time.monotonic_ns()}"
    server = [sys.executable, "-m", "tests.records.server", url, str(port_file)]
    process, port = bench_records._start(server, port_file)  # migrates the schema
    bench_records._fill(url, workdir, count)
    bench_records._wrk(f"http://127.0.0.1:{port}{bench_records.PREFIX}1", None, 1)
    return process, f"http://127.0.0.1:{port}/"


def start_artifacts(work: Path, count: int) -> tuple[subprocess.Popen[str], str, float]:
    """A repository with ``count`` more indexed files holding a 1 KiB file: the process, the
    file's URL and the seconds opening the repository took."""
    small = work / "small"
    small.write_bytes(b"x" * 1024)
    root, port = work / f"artifacts-{count}", free_port()
    root.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", "import benchmarks.bench_artifacts as b;"
         f" b.serve({str(root)!r}, {port}, {count})"], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    token, opened = child.stdout.readline().split()
    url = f"http://127.0.0.1:{port}/bin/bench/1/small.bin"
    curl_seconds("-u", f"build-1:{token}", "-T", str(small), url)
    return child, url, float(opened)


async def lease_create(url: str, workdir: Path, count: int) -> dict[str, list[float]]:
    """Seconds of each lease create by type, with ``count`` other leases and counters."""
    database = await db.connect(url, reactor)
    try:
        await database.execute(FILL_LEASES, (count,))
        await database.execute(FILL_NUMBERS, (count,))
        bench = await start_bench(database, ProcessProvider(workdir / f"lets-{count}", reactor))
        try:
            return {kind: await lease_latencies(bench, kind) for kind in ("warm", "cold")}
        finally:
            await bench.close()
    finally:
        await database.stop()


def measure(workdir: Path, cluster: PostgresCluster) -> Figures:
    """Every figure at every size, the sizes in turn in each of ``ROUNDS``; the best of the
    rounds is kept (the machine is shared). The lease rows last: they run the reactor."""
    figures: Figures = {}

    def put(name: str, count: int, value: float, best: Callable[..., float] = max) -> None:
        by_size = figures.setdefault(name, {})
        by_size[count] = best(by_size.get(count, value), value)

    backends: dict[str, Callable[[int, str], str]] = {
        "SQLite": lambda count, what: f"sqlite:///{workdir}/{what}-{count}.sqlite",
        "PostgreSQL": lambda count, what: cluster.create_database(f"growth_{what}_{count}"),
    }
    processes: list[subprocess.Popen[Any]] = []
    try:
        records = {}
        for backend, url in backends.items():
            for count in SIZES:
                process, base = start_records(url(count, "records"), workdir, count)
                processes.append(process)
                records[backend, count] = base, bench_records._script(
                    workdir, bench_records.LUA, count)
        artifacts = {}
        for count in SIZES:
            child, file_url, opened = start_artifacts(workdir, count)
            processes.append(child)
            artifacts[count] = child, file_url
            put("artifacts: open s", count, opened, min)
        for _ in range(ROUNDS):
            for count in SIZES:
                for backend in backends:
                    base, script = records[backend, count]
                    rate, p99 = bench_records._wrk(base, script, RECORDS_SECONDS)
                    put(f"records GET, {backend}: req/s", count, rate)
                    put(f"records GET, {backend}: p99 ms", count, p99, min)
                rate, p99, _ = wrk(artifacts[count][1], ARTIFACTS_SECONDS)
                put("artifacts GET 1 KiB: req/s", count, rate)
                put("artifacts GET 1 KiB: p99 ms", count, p99, min)
        for count in SIZES:
            put("artifacts: RSS MiB", count, rss_kib(artifacts[count][0].pid) / 1024, min)
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)

    async def leases() -> None:
        for count in SIZES:
            for backend, url in backends.items():
                took = await lease_create(url(count, "leases"), workdir, count)
                for kind, seconds in took.items():
                    put(f"lease create {kind}, {backend}: p50 ms", count,
                        percentile(seconds, 50) * 1000, min)

    run_on_reactor(leases)
    return figures


def report(figures: Figures) -> str:
    """The table: each figure at each size, and its ratio at 100k to 1k rows."""
    head = f"{'rows in the table read':<34}" + "".join(f"{n:>10,}" for n in SIZES)
    lines = [head + f"{'100k / 1k':>11}"]
    for name, by_size in figures.items():
        cells = "".join(f"{by_size[n]:>10.{3 if 'open' in name else 1}f}" for n in SIZES)
        lines.append(f"{name:<34}{cells}{by_size[SIZES[-1]] / by_size[SIZES[0]]:>10.2f}x")
    return "\n".join(lines)


def main() -> None:
    """Measure on throwaway databases (SQLite files, a PostgreSQL cluster); print the table."""
    if shutil.which("wrk") is None:
        raise SystemExit("bench_growth needs wrk: apt-get install wrk")
    workdir = Path(tempfile.mkdtemp(prefix="farm-bench-growth-"))
    pg_dir = Path(tempfile.mkdtemp(prefix="farm-bench-growth-pg-"))
    pg_dir.chmod(0o755)  # the postgres user must reach its cluster directory
    cluster = PostgresCluster(pg_dir / "pg")
    cluster.start()
    try:
        figures = measure(workdir, cluster)
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(pg_dir, ignore_errors=True)
    print(report(figures), flush=True)
