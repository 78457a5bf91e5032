"""Build records: ``GET /builds/{name}/{version}`` with 100,000 records, SQLite and PostgreSQL.

Issue 16's targets: requests per second at least 0.5x those of a constant-JSON Twisted
resource on the same machine (the reference answers the same kind of document with no lookup
at all), p99 under 20 ms; and with nginx in front as docs/nginx/records.conf sets it up (a
proxy_cache), at least 0.8x nginx serving the same 100,000 documents from files (the same
work for a client: one JSON document by its name, random among 100,000, from nginx). Each
server runs in a process of its own on loopback; wrk (Debian's package) is the load
generator, asking for a random one of the stored versions on each request; p99 latency comes
from wrk's latency distribution. nginx runs with Debian's http settings; its cache is warmed
by asking for every record once (through nginx, from the master) before it is measured.
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

from benchmarks.bench_artifacts import DEBIAN_HTTP, wait_for
from buildbot_farm.records import chain
from buildbot_farm.records.model import BuildRecord
from tests.harness.ports import free_port
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
# Every record once, in order (one wrk thread): fills nginx's cache.
EVERY_ONCE = """
n = -1
request = function()
  n = (n + 1) % ({last} + 1)
  return wrk.format("GET", "{prefix}" .. n)
end
"""
PREFIX = "/plugins/farm/api/builds/bench/"
DOCS_FRONT = ROOT / "docs" / "nginx" / "records.conf"


def _document(n: int) -> bytes:
    return BuildRecord(
        name="bench", version=str(n), timestamp=1.7e9 + n, built_on="host-1",
        source_url=f"https://github.com/o/bench/commit/{n:040x}",
        source={"repository": "https://github.com/o/bench", "commit": f"{n:040x}"},
        environment={"os": "Debian 12", "arch": "amd64"},
    ).document()


def _fill(url: str, workdir: Path, count: int = RECORDS) -> None:
    """Insert ``count`` records in bulk (the server made the schema), chained as the farm does."""
    rows, prev = [], chain.GENESIS
    for n in range(count):
        document = _document(n)
        digest = chain.entry_hash(prev, chain.RECORD, "bench", str(n), document)
        rows.append(("bench", str(n), 1.7e9 + n, "success", f"{n:040x}", document.decode(),
                     0.0, n + 1, digest))
        prev = digest
    sql = ("INSERT INTO farm_records (name, version, timestamp, result, source_commit, body,"
           " recorded_at, chain_seq, hash) VALUES ")
    if url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(url[len("sqlite:///"):]) as connection:
            connection.executemany(sql + "(?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
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


def _wrk(url: str, script: Path | None, seconds: int = SECONDS) -> tuple[float, float]:
    """Requests per second and p99 latency (ms) of wrk against ``url``."""
    command = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return rps, float(value) * scale


def _script(workdir: Path, template: str, count: int = RECORDS) -> Path:
    script = workdir / f"script-{random.random()}.lua"
    script.write_text(template.replace("{prefix}", PREFIX).replace("{last}", str(count - 1)))
    return script


def _measure_records(
    url: str, workdir: Path, with_nginx: bool = False
) -> dict[str, tuple[float, float]]:
    """The master's row; with ``with_nginx``, nginx's two rows too (while it serves)."""
    port_file = workdir / f"port-{random.random()}"
    server = [sys.executable, "-m", "tests.records.server", url, str(port_file)]
    process, port = _start(server, port_file)  # migrates the schema
    try:
        _fill(url, workdir)
        script = _script(workdir, LUA)
        _wrk(f"http://127.0.0.1:{port}{PREFIX}1", None)  # warm up
        rows = {"records": _wrk(f"http://127.0.0.1:{port}/", script)}
        if with_nginx:
            rows.update(_measure_nginx(workdir, port, script))
        return rows
    finally:
        process.terminate()
        process.wait(10)


def _measure_nginx(workdir: Path, master: int, script: Path) -> dict[str, tuple[float, float]]:
    """nginx alone serving the documents as files, and nginx's cache in front of ``master``."""
    files = workdir / "files"
    files.mkdir()
    for n in range(RECORDS):
        (files / str(n)).write_bytes(_document(n))
    alone, front = free_port(), free_port()
    documented = (
        DOCS_FRONT.read_text()
        .replace("listen 80;", f"listen 127.0.0.1:{front};")
        .replace("/var/cache/nginx/farm-records", str(workdir / "nginx-cache"))
        .replace("server 127.0.0.1:8010;", f"server 127.0.0.1:{master};")
    )
    (workdir / "temp").mkdir()
    config = workdir / "nginx.conf"
    config.write_text(
        f"user root;\ndaemon off;\nworker_processes auto;\npid {workdir}/nginx.pid;\n"
        f"events {{ worker_connections 768; }}\nhttp {{\n{DEBIAN_HTTP}"
        f" access_log off;\n client_body_temp_path {workdir}/temp;\n"
        f" proxy_temp_path {workdir}/temp/proxy;\n"
        f" server {{\n  listen 127.0.0.1:{alone};\n"
        f"  location {PREFIX} {{ alias {files}/; default_type application/json; }}\n }}\n"
        f"{documented}\n}}\n"
    )
    nginx = subprocess.Popen(["nginx", "-c", str(config), "-e", str(workdir / "error.log")])
    try:
        wait_for(alone)
        wait_for(front)
        warm = _script(workdir, EVERY_ONCE)
        subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", "-d40s", "-s", str(warm),
                        f"http://127.0.0.1:{front}/"], check=True, capture_output=True)
        _wrk(f"http://127.0.0.1:{alone}{PREFIX}1", None)
        return {
            "nginx, files": _wrk(f"http://127.0.0.1:{alone}/", script),
            "nginx cache, records": _wrk(f"http://127.0.0.1:{front}/", script),
        }
    finally:
        nginx.terminate()
        nginx.wait(10)


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
        results = {"constant JSON resource": _measure_constant(workdir)}
        sqlite = _measure_records(f"sqlite:///{workdir}/farm.sqlite", workdir, with_nginx=True)
        results["records, SQLite"] = sqlite.pop("records")
        pg = _measure_records(cluster.create_database("bench"), workdir)
        results["records, PostgreSQL"] = pg["records"]
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(pg_dir, ignore_errors=True)
    baseline = results["constant JSON resource"][0]
    print(f"GET /builds/NAME/VERSION, {RECORDS:,} records, wrk -c{CONNECTIONS} {SECONDS}s")
    print(f"{'server':<26}{'req/s':>10}{'p99 ms':>10}{'x const':>10}")
    for name, (rps, p99) in results.items():
        print(f"{name:<26}{rps:>10.0f}{p99:>10.2f}{rps / baseline:>10.2f}")
    print(f"with nginx in front ({DOCS_FRONT.name}), the same random GETs:")
    for name, (rps, p99) in sqlite.items():
        print(f"{name:<26}{rps:>10.0f}{p99:>10.2f}")
    ratio = sqlite["nginx cache, records"][0] / sqlite["nginx, files"][0]
    print(f"nginx cache / nginx files: {ratio:.2f}x")
    print(json.dumps({k: {"rps": v[0], "p99_ms": v[1]} for k, v in {**results, **sqlite}.items()}))
