"""Artifact repository vs nginx on this machine: 256 MiB download and upload, and the
repository's peak memory during a 1 GiB upload.

The repository runs in a process of its own (as in a master) on its own port
(``ArtifactRepository(port=...)``: uploads stream into the storage), and nginx serves the
same directory with its WebDAV module; curl is the client for both. Targets: download >= 0.9x
nginx, upload >= 0.8x nginx, peak memory < 64 MiB above idle.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MIB = 1024 * 1024
DAV_EXT = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so"


def serve(root: str, port: int) -> None:
    """Child process: the repository at http://127.0.0.1:PORT/ (its own port); prints a token."""
    from twisted.internet import defer, reactor

    from buildbot_farm import db
    from buildbot_farm.artifacts import ArtifactRepository, open_repository, site

    async def start() -> None:
        database = await db.connect(f"sqlite:///{root}/farm.sqlite", reactor)
        url = f"http://127.0.0.1:{port}/"
        config = ArtifactRepository(directory=f"{root}/repo", max_upload_size=4 * 1024 * MIB)
        repository = await open_repository(config, database, reactor, "bench", url)
        site.listen(repository, reactor, port, "127.0.0.1")
        print(await repository.mint(1, "bench", 1), flush=True)

    reactor.callWhenRunning(lambda: defer.ensureDeferred(start()))
    reactor.run()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


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


def start_nginx(workdir: Path, root: Path, port: int) -> subprocess.Popen[bytes]:
    """nginx serving and accepting (WebDAV PUT) files under ``root`` at /dav/.

    ``sendfile on`` as in Debian's own nginx.conf (nginx's built-in default is off).
    """
    (workdir / "temp").mkdir()
    config = workdir / "nginx.conf"
    config.write_text(
        f"load_module {DAV_EXT};\nuser root;\ndaemon off;\nworker_processes 1;\n"
        f"pid {workdir}/nginx.pid;\nevents {{}}\nhttp {{\n access_log off;\n sendfile on;\n"
        f" client_body_temp_path {workdir}/temp;\n client_max_body_size 4g;\n"
        f" server {{\n  listen 127.0.0.1:{port};\n  location /dav/ {{\n   alias {root}/;\n"
        "   dav_methods PUT;\n   create_full_put_path on;\n  }\n }\n}\n"
    )
    process = subprocess.Popen(["nginx", "-c", str(config), "-e", str(workdir / "error.log")])
    time.sleep(0.5)
    return process


def main() -> None:
    """Measure and print the table."""
    work = Path(tempfile.mkdtemp(prefix="bench-artifacts-"))
    port, nginx_port = free_port(), free_port()
    code = f"import benchmarks.bench_artifacts as b; b.serve({str(work)!r}, {port})"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    nginx_root = work / "nginx-files"
    nginx_root.mkdir()
    nginx = start_nginx(work, nginx_root, nginx_port)
    try:
        assert child.stdout is not None
        token = child.stdout.readline().strip()
        repo = f"http://127.0.0.1:{port}/bin/bench/1/"
        dav = f"http://127.0.0.1:{nginx_port}/dav/"
        blob = work / "blob"
        with open(blob, "wb") as out:
            for _ in range(256):
                out.write(os.urandom(MIB))
        auth = ["-u", f"build-1:{token}"]
        rows = []
        upload_repo = min(curl_seconds(*auth, "-T", str(blob), f"{repo}up{i}") for i in range(3))
        upload_nginx = min(curl_seconds("-T", str(blob), f"{dav}up{i}") for i in range(3))
        rows.append(("upload 256 MiB", upload_nginx, upload_repo, upload_nginx / upload_repo))
        down_repo = min(curl_seconds(f"{repo}up0") for _ in range(3))
        down_nginx = min(curl_seconds(f"{dav}up0") for _ in range(3))
        rows.append(("download 256 MiB", down_nginx, down_repo, down_nginx / down_repo))
        print(f"{'':18} {'nginx s':>9} {'repo s':>9} {'repo speed / nginx':>20}")
        for name, a, b, ratio in rows:
            print(f"{name:18} {a:9.3f} {b:9.3f} {ratio:19.2f}x")
        big = work / "big"
        with open(big, "wb") as out:
            for _ in range(1024):
                out.write(os.urandom(MIB) if _ == 0 else b"\0" * MIB)
        idle = rss_kib(child.pid)
        peak = [idle]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_kib(child.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        curl_seconds(*auth, "-T", str(big), f"{repo}big")
        done.set()
        sampler.join()
        print(f"1 GiB upload: repository RSS idle {idle / 1024:.1f} MiB, peak"
              f" {peak[0] / 1024:.1f} MiB (+{(peak[0] - idle) / 1024:.1f} MiB)")
    finally:
        child.terminate()
        nginx.terminate()
        child.wait()
        nginx.wait()
        shutil.rmtree(work, ignore_errors=True)
