"""Build records: ``GET /builds/{name}/{version}`` with 100,000 records, SQLite and PostgreSQL.

Issue 6's target: requests per second at least 0.5x those of a constant-JSON Twisted
resource on the same machine. Each server runs in a process of its own on loopback; wrk
(Debian's package) is the load generator, asking for a random one of the stored versions
on each request; p99 latency comes from wrk's latency distribution.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

from buildbot_farm.records import chain
from buildbot_farm.records.model import BuildRecord
from tests.harness.postgres import PostgresCluster

RECORDS = 100_000
SECONDS = 10
CONNECTIONS = 32
ROOT = Path(__file__).resolve().parent.parent
CONSTANT_SERVER = """
import sys
from twisted.internet import reactor
from twisted.web import resource, server
BODY = open(sys.argv[1], "rb").read()
class Constant(resource.Resource):
    isLeaf = True
    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return BODY
site = server.Site(Constant())
port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=1024)
open(sys.argv[2], "w").write(str(port.getHost().port))
reactor.run()
"""
LUA = """
request = function()
  return wrk.format("GET", "{prefix}" .. math.random(0, {last}))
end
"""


def _document(n: int) -> bytes:
    return BuildRecord(
        name="bench", version=str(n), timestamp=1.7e9 + n, built_on="host-1",
        source_url=f"https://github.com/o/bench/commit/{n:040x}",
        source={"repository": "https://github.com/o/bench", "commit": f"{n:040x}"},
        environment={"os": "Debian 12", "arch": "amd64"},
    ).document()


def _fill(url: str, workdir: Path) -> None:
    """Insert the records in bulk (the server created the schema), chained as the farm does."""
    rows, prev = [], chain.GENESIS
    for n in range(RECORDS):
        document = _document(n)
        digest = chain.entry_hash(prev, chain.RECORD, "bench", str(n), document)
        rows.append(("bench", str(n), 1.7e9 + n, "success", f"{n:040x}", document.decode(),
                     0.0, n + 1, prev, digest))
        prev = digest
    sql = ("INSERT INTO farm_records (name, version, timestamp, result, source_commit, body,"
           " recorded_at, chain_seq, prev_hash, hash) VALUES ")
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url[len("sqlite:///"):]) as connection:
            connection.executemany(sql + "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return
    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        from psycopg2.extras import execute_values

        execute_values(cursor, sql + "%s", rows, page_size=5000)


def _start(command: list[str], port_file: Path) -> tuple[subprocess.Popen[bytes], int]:
    process = subprocess.Popen(command, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text()):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{command} did not start")
        time.sleep(0.05)
    return process, int(port_file.read_text())


def _wrk(url: str, script: Path | None) -> tuple[float, float]:
    """Requests per second and p99 latency (ms) of wrk against ``url``."""
    command = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return rps, float(value) * scale


def _measure_records(url: str, workdir: Path) -> tuple[float, float]:
    port_file = workdir / f"port-{random.random()}"
    server = [sys.executable, "-m", "tests.records.server", url, str(port_file)]
    process, port = _start(server, port_file)  # migrates the schema
    try:
        _fill(url, workdir)
        script = workdir / "random.lua"
        prefix = "/plugins/farm/api/builds/bench/"
        script.write_text(LUA.replace("{prefix}", prefix).replace("{last}", str(RECORDS - 1)))
        _wrk(f"http://127.0.0.1:{port}{prefix}1", None)  # warm up
        return _wrk(f"http://127.0.0.1:{port}/", script)
    finally:
        process.terminate()
        process.wait(10)


def _measure_constant(workdir: Path) -> tuple[float, float]:
    body = workdir / "body.json"
    body.write_bytes(_document(1))
    port_file = workdir / "constant-port"
    process, port = _start(
        [sys.executable, "-c", CONSTANT_SERVER, str(body), str(port_file)], port_file
    )
    try:
        _wrk(f"http://127.0.0.1:{port}/", None)
        return _wrk(f"http://127.0.0.1:{port}/", None)
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    """Measure and print the table."""
    if shutil.which("wrk") is None:
        raise SystemExit("bench_records needs wrk: apt-get install wrk")
    workdir = Path(tempfile.mkdtemp(prefix="farm-bench-records-"))
    pg_dir = Path(tempfile.mkdtemp(prefix="farm-bench-pg-"))
    cluster = PostgresCluster(pg_dir)
    cluster.start()
    try:
        results = {
            "constant JSON resource": _measure_constant(workdir),
            "records, SQLite": _measure_records(f"sqlite:///{workdir}/farm.sqlite", workdir),
            "records, PostgreSQL": _measure_records(cluster.create_database("bench"), workdir),
        }
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(pg_dir, ignore_errors=True)
    baseline = results["constant JSON resource"][0]
    print(f"GET /builds/NAME/VERSION, {RECORDS:,} records, wrk -c{CONNECTIONS} {SECONDS}s")
    print(f"{'server':<26}{'req/s':>10}{'p99 ms':>10}{'x const':>10}")
    for name, (rps, p99) in results.items():
        print(f"{name:<26}{rps:>10.0f}{p99:>10.2f}{rps / baseline:>10.2f}")
    print(json.dumps({k: {"rps": v[0], "p99_ms": v[1]} for k, v in results.items()}))
