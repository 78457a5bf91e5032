"""The artifact repository against what a user would run instead, on this machine.

The GET rows are measured RUNS (3) times, the two transfer rows TRANSFER_ROUNDS (15)
times, the repository and its reference in turn; each round of a transfer row starts with
the other one (repository first, then reference first, ...), so neither side always runs
right after the other's transfer. Every figure is printed as its median with its range
(min-max), the same statistic for both sides, and the ratio (repository / reference, as
speed: above 1 the repository is faster) as the median and range of the ratios of the
rounds' pairs. The machine is shared: quote medians with their ranges, not one run. A
256 MiB transfer takes 0.2-1 s, and a single round's figure is mostly how much CPU curl
got meanwhile: with three rounds, runs of the same download code gave 0.53x-1.31x, so
the transfers take more rounds than the GETs (four seconds of ``wrk`` each).

* **small GET 1 KiB vs static.File**: ``wrk`` (keep-alive, one thread, 8 connections)
  GETs one indexed 1 KiB artifact from the repository on its own port, and the same file
  from Twisted's ``static.File`` serving the repository's directory, each a single Twisted
  process on the same reactor: the same bytes, headers (length, type, Last-Modified) and
  connection handling; the repository also checks the path and sends its ETag.
* **small GET vs nginx**: the same file from nginx configured with the settings of Debian's
  own ``/etc/nginx/nginx.conf`` (``worker_processes auto``, ``sendfile on``,
  ``tcp_nopush on``, ``types_hash_max_size 2048``, ``mime.types``, ``access_log`` to a
  file, ``gzip on``): what a user's nginx serving that directory does.
* **nginx in front vs nginx alone**: the same GET through nginx configured with
  ``docs/nginx/artifacts.conf`` (the documented setup: nginx serves the files, the master
  only says yes or no to writes via ``auth_request``), against nginx alone.
* **download 256 MiB vs nginx**: ``curl`` downloads a 256 MiB artifact from the repository
  and from nginx (Debian settings) serving the same file.
* **upload 256 MiB vs nginx WebDAV**: ``curl -T`` uploads 256 MiB of random bytes to the
  repository (token checked, streamed to a temporary file, sha256 computed, renamed into
  place, indexed) and to nginx's WebDAV ``PUT`` (streamed to a temporary file, renamed
  into place; nginx does not hash, so the repository does more work). After each round
  both uploaded files are deleted from disk (outside the timing, the same for both), so
  thirty uploads do not leave 7.5 GiB of dirty pages whose writeback may slow later rounds.

Wall figures move with the machine's load; each row also gives the server's own CPU time
for the same work (user + system of its processes, from ``/proc``: per request for the
GETs, per transfer otherwise), which other processes disturb much less.

Last, the repository's peak memory during a 1 GiB upload (target: < 64 MiB above idle).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.harness.nginx import DEBIAN_HTTP
from tests.harness.ports import free_port

MIB = 1024 * 1024
RUNS = 3
TRANSFER_ROUNDS = 15
DAV_EXT = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so"
DOCS_FRONT = Path(__file__).resolve().parents[1] / "docs" / "nginx" / "artifacts.conf"


def serve(root: str, port: int, rows: int = 0) -> None:
    """Child process: the repository at http://127.0.0.1:PORT/ (its own port), with ``rows``
    more files in its index; prints a token and the seconds opening the repository took."""
    from twisted.internet import defer

    from buildbot_farm import db
    from buildbot_farm.artifacts import ArtifactRepository, open_repository, site
    from tests.harness.twisted_reactor import reactor

    async def start() -> None:
        database = await db.connect(f"sqlite:///{root}/farm.sqlite", reactor)
        if rows:
            fill_index(f"{root}/farm.sqlite", rows)
        url = f"http://127.0.0.1:{port}/"
        config = ArtifactRepository(directory=f"{root}/repo", max_upload_size=4 * 1024 * MIB)
        started = time.monotonic()
        repository = await open_repository(config, database, reactor, "bench", url)
        opened = time.monotonic() - started
        site.listen(repository, reactor, port, "127.0.0.1")
        print(await repository.mint(1, "bench", 1), f"{opened:.3f}", flush=True)

    reactor.callWhenRunning(lambda: defer.ensureDeferred(start()))
    reactor.run()


def fill_index(database: str, rows: int) -> None:
    """Index ``rows`` files of 1,000 builds (rows only: a GET's cost does not depend on
    whether the other files are on disk, the directory lookups being hashed)."""
    import sqlite3

    with sqlite3.connect(database) as connection:
        connection.executemany(
            "INSERT INTO farm_artifacts (path, prefix, size, sha256, build_id, created_at,"
            " expires_at) VALUES (?, ?, 1024, ?, 1, 0, NULL)",
            ((f"bin/other/{i % 1000}/file-{i}", f"bin/other/{i % 1000}", f"{i:064x}")
             for i in range(rows)))


def serve_static(directory: str, port: int) -> None:
    """Child process: Twisted's static.File serving ``directory`` at http://127.0.0.1:PORT/."""
    from twisted.web import server, static

    from tests.harness.twisted_reactor import reactor

    reactor.listenTCP(port, server.Site(static.File(directory)), interface="127.0.0.1")
    reactor.run()


def wait_for(port: int) -> None:
    """Wait until something listens on ``port``."""
    for _ in range(200):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def curl_seconds(*args: str) -> float:
    """Run curl (failing on HTTP errors); return the wall time it took."""
    started = time.monotonic()
    subprocess.run(["curl", "-sSf", "-o", "/dev/null", *args], check=True)
    return time.monotonic() - started


def waited_seconds(pids: list[int]) -> float:
    """Seconds the threads of the processes ``pids`` have spent runnable but waiting for a
    CPU (``/proc/PID/task/TID/schedstat``): the machine's load, not their own work."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except OSError:
                continue
    return total / 1e9


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids``."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (nginx's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def workers(nginx: int) -> list[int]:
    """nginx's worker processes, once all of them are there: nginx listens before it has
    forked every worker, and a worker missing from the list would not have its CPU time
    counted (a transfer's CPU ratio came out as 0.00 that way)."""
    expected = len(os.sched_getaffinity(0))  # ``worker_processes auto``
    found = children(nginx)
    for _ in range(100):
        if len(found) >= expected:
            break
        time.sleep(0.05)
        found = children(nginx)
    return found


def wrk(url: str, seconds: int = 4) -> tuple[float, float, int]:
    """Requests per second, the 99th percentile latency (ms) and the number of requests of
    ``wrk`` GETting ``url``."""
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "--latency", url],
                         check=True, capture_output=True, text=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors on {url}:\n{out}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return rate, float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit], count


def start_nginx(work: Path, files: Path, dav: Path, alone: int, front: int,
                auth_url: str) -> subprocess.Popen[bytes]:
    """nginx with Debian's settings: on ``alone``, ``files`` at / and WebDAV PUT into
    ``dav`` at /dav/; on ``front``, docs/nginx/artifacts.conf in front of the repository."""
    (work / "temp").mkdir()
    documented = (
        DOCS_FRONT.read_text()
        .replace("listen 80;", f"listen 127.0.0.1:{front};")
        .replace("/var/lib/buildbot/master/artifacts/", f"{files}/")
        .replace("http://127.0.0.1:8010/plugins/farm/artifacts/.farm-auth", auth_url)
    )
    config = work / "nginx.conf"
    config.write_text(
        f"load_module {DAV_EXT};\nuser root;\ndaemon off;\nworker_processes auto;\n"
        f"pid {work}/nginx.pid;\nevents {{ worker_connections 768; }}\nhttp {{\n{DEBIAN_HTTP}"
        f" access_log {work}/access.log;\n client_body_temp_path {work}/temp;\n"
        f" proxy_temp_path {work}/temp/proxy;\n client_max_body_size 4g;\n"
        f" server {{\n  listen 127.0.0.1:{alone};\n  location / {{ root {files}; }}\n"
        f"  location /dav/ {{\n   alias {dav}/;\n   dav_methods PUT;\n"
        "   create_full_put_path on;\n  }\n }\n"
        f"{documented}\n}}\n"
    )
    process = subprocess.Popen(["nginx", "-c", str(config), "-e", str(work / "error.log")])
    wait_for(alone)
    wait_for(front)
    return process


# The figure (req/s or seconds), the server's CPU seconds, its seconds waiting for a CPU.
Measured = tuple[float, float, float]


class Row:
    """One row of the table: the repository's and the reference's figures, run by run."""

    def __init__(self, unit: str, higher_is_better: bool) -> None:
        self.unit = unit
        self.higher_is_better = higher_is_better
        self.mine: list[Measured] = []
        self.theirs: list[Measured] = []

    def ratios(self, index: int, cpu: bool = False) -> list[float]:
        """Repository / reference as speed (figure ``index``: 0 wall, 1 CPU) per run."""
        pairs = zip(self.mine, self.theirs)
        if cpu or not self.higher_is_better:
            return [t[index] / m[index] for m, t in pairs]
        return [m[index] / t[index] for m, t in pairs]


def timed(pids: Callable[[], list[int]], work: Callable[[], float]) -> Callable[[], Measured]:
    """``work`` (returning its figure) measured with the CPU time of the processes ``pids``."""
    def run() -> Measured:
        before, waited = cpu_seconds(pids()), waited_seconds(pids())
        figure = work()
        return figure, cpu_seconds(pids()) - before, waited_seconds(pids()) - waited
    return run


def spread(values: list[float], digits: int) -> str:
    """``median (min-max)`` of ``values``."""
    middle = statistics.median(values)
    return f"{middle:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def span(values: list[float], digits: int) -> str:
    """``min-max`` of ``values``."""
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def report(rows: dict[str, Row]) -> None:
    """Print each row: median (min-max) of both figures and of the pairs' ratios."""
    print(f"{'':31} {'runs':>4} {'repository':>21} {'reference':>21} {'repo/ref':>17}"
          f" {'CPU ratio':>17} {'waited s: repo':>15} {'ref':>5}")
    for name, row in rows.items():
        digits = 0 if row.unit == "req/s" else 3
        print(f"{name:31} {len(row.mine):>4} {spread([m[0] for m in row.mine], digits):>21}"
              f" {spread([t[0] for t in row.theirs], digits):>21}"
              f" {spread(row.ratios(0), 2):>17} {spread(row.ratios(1, True), 2):>17}"
              f" {statistics.median([m[2] for m in row.mine]):>15.2f}"
              f" {statistics.median([t[2] for t in row.theirs]):>5.2f}  ({row.unit})")
    print("each figure: median (min-max) over the runs; repo/ref: as speed (above 1: the"
          " repository is faster), per pair of runs; CPU ratio: the reference's CPU time / the"
          " repository's for the same work (above 1: the repository uses less); waited: median"
          " seconds the server was runnable but waiting for a CPU (the machine's load)")


def main() -> None:
    """Measure and print the table."""
    work = Path(tempfile.mkdtemp(prefix="bench-artifacts-"))
    port, static_port, alone, front = free_port(), free_port(), free_port(), free_port()
    child = subprocess.Popen(
        [sys.executable, "-c", f"import benchmarks.bench_artifacts as b; b.serve({str(work)!r},"
         f" {port})"], stdout=subprocess.PIPE, text=True)
    statics = subprocess.Popen(
        [sys.executable, "-c", "import benchmarks.bench_artifacts as b;"
         f" b.serve_static({str(work / 'repo')!r}, {static_port})"])
    (work / "dav").mkdir()
    nginx = None
    try:
        assert child.stdout is not None
        token = child.stdout.readline().split()[0]
        nginx = start_nginx(work, work / "repo", work / "dav", alone, front,
                            f"http://127.0.0.1:{port}/.farm-auth")
        wait_for(static_port)
        nginx_workers = workers(nginx.pid)
        measure_all(work, token, {"repo": port, "static": static_port, "nginx": alone,
                                         "front": front},
                           {"repo": [child.pid], "static": [statics.pid],
                            "nginx": nginx_workers,
                            "front": [*nginx_workers, child.pid]})
        memory(child.pid, work, ["-u", f"build-1:{token}"],
               f"http://127.0.0.1:{port}/bin/bench/1/huge")
    finally:
        for process in (child, statics, nginx):
            if process is not None:
                process.terminate()
                process.wait()
        shutil.rmtree(work, ignore_errors=True)


def measure_all(work: Path, token: str, ports: dict[str, int],
                pids: dict[str, list[int]]) -> None:
    """Measure every row RUNS times; print the table."""
    auth = ["-u", f"build-1:{token}"]
    path = "bin/bench/1/"
    repo, nginx = f"http://127.0.0.1:{ports['repo']}/{path}", f"http://127.0.0.1:{ports['nginx']}/"
    small, blob = work / "small", work / "blob"
    small.write_bytes(os.urandom(1024))
    with open(blob, "wb") as out:
        for _ in range(256):
            out.write(os.urandom(MIB))
    curl_seconds(*auth, "-T", str(small), repo + "small.bin")
    curl_seconds(*auth, "-T", str(blob), repo + "big.bin")
    urls = {name: f"http://127.0.0.1:{ports[name]}/{prefix}{path}small.bin"
            for name, prefix in [("repo", ""), ("static", ""), ("nginx", ""),
                                 ("front", "artifacts/")]}
    for url in urls.values():
        curl_seconds(url)
    p99: dict[str, list[float]] = {name: [] for name in urls}

    def get(name: str) -> Callable[[], Measured]:
        def run() -> Measured:
            before, waited = cpu_seconds(pids[name]), waited_seconds(pids[name])
            rate, latency, count = wrk(urls[name])
            p99[name].append(latency)
            return (rate, (cpu_seconds(pids[name]) - before) / count,
                    waited_seconds(pids[name]) - waited)
        return run

    rows: dict[str, Row] = {}
    for _ in range(RUNS):
        for name, mine, theirs in [
            ("small GET 1 KiB vs static.File", get("repo"), get("static")),
            ("small GET 1 KiB vs nginx", get("repo"), get("nginx")),
            ("nginx in front vs nginx alone", get("front"), get("nginx")),
        ]:
            row = rows.setdefault(name, Row("req/s", True))
            row.mine.append(mine())
            row.theirs.append(theirs())
    download = rows.setdefault("download 256 MiB vs nginx", Row("s", False))
    upload = rows.setdefault("upload 256 MiB vs nginx WebDAV", Row("s", False))
    for turn in range(TRANSFER_ROUNDS):
        name = f"up{turn}"
        pairs = [
            (download, timed(lambda: pids["repo"], lambda: curl_seconds(repo + "big.bin")),
             timed(lambda: pids["nginx"], lambda: curl_seconds(nginx + path + "big.bin"))),
            (upload, timed(lambda: pids["repo"],
                           lambda: curl_seconds(*auth, "-T", str(blob), repo + name)),  # noqa: B023
             timed(lambda: pids["nginx"],
                   lambda: curl_seconds("-T", str(blob), f"{nginx}dav/{name}"))),  # noqa: B023
        ]
        for row, mine, theirs in pairs:
            if turn % 2:
                theirs_first = theirs()
                row.mine.append(mine())
                row.theirs.append(theirs_first)
            else:
                row.mine.append(mine())
                row.theirs.append(theirs())
        (work / "repo" / path / name).unlink()
        (work / "dav" / name).unlink()
    report(rows)
    print("p99 latency of the small GETs (ms): " + ", ".join(
        f"{name} {span(values, 2)}" for name, values in p99.items()))


def memory(pid: int, work: Path, auth: list[str], url: str) -> None:
    """Print the repository's resident memory, idle and at its peak during a 1 GiB upload."""
    big = work / "huge"
    with open(big, "wb") as out:
        for i in range(1024):
            out.write(os.urandom(MIB) if i == 0 else b"\0" * MIB)
    idle = rss_kib(pid)
    peak = [idle]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    curl_seconds(*auth, "-T", str(big), url)
    done.set()
    sampler.join()
    print(f"1 GiB upload: repository RSS idle {idle / 1024:.1f} MiB, peak"
          f" {peak[0] / 1024:.1f} MiB (+{(peak[0] - idle) / 1024:.1f} MiB)")
