"""Real nginx in front of a real records API, configured by docs/nginx/records.conf."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.nginx import DEBIAN_HTTP, nginx_binary, start_nginx
from tests.harness.ports import free_port
from tests.records.server import ADMIN_KEY, KEY

ROOT = Path(__file__).resolve().parents[2]
DOCS_CONFIG = ROOT / "docs" / "nginx" / "records.conf"
API = "/plugins/farm/api"
IMMUTABLE = "public, max-age=31536000, immutable"
JSON = "application/json; charset=utf-8"

Response = tuple[int, dict[str, str], bytes]


class Front:
    """The records API alone on a port (``tests.records.server``, SQLite) and nginx in
    front of it with the documented configuration; ``stored`` is where nginx keeps records."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.stored = workdir / "farm-records"
        self.port = free_port()
        self.master: subprocess.Popen[bytes] | None = None
        self.nginx: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the master, then nginx, and wait until both answer."""
        binary = nginx_binary()
        port_file = self.workdir / "master-port"
        self.master = subprocess.Popen(
            [sys.executable, "-m", "tests.records.server",
             f"sqlite:///{self.workdir}/farm.sqlite", str(port_file)], cwd=ROOT)
        master_port = int(_wait(lambda: port_file.exists() and port_file.read_text()))
        server = (
            DOCS_CONFIG.read_text()
            .replace("listen 80;", f"listen 127.0.0.1:{self.port};")
            .replace("server 127.0.0.1:8010;", f"server 127.0.0.1:{master_port};")
            .replace("/var/lib/nginx/farm-records", str(self.stored))
        )
        self.stored.mkdir()
        self.nginx = start_nginx(binary, self.workdir, server, http=DEBIAN_HTTP)
        _wait(lambda: self._answers())

    def stop_master(self) -> None:
        """Stop the master: what nginx answers from then on, it answers alone."""
        if self.master is not None:
            self.master.terminate()
            self.master.wait(10)
            self.master = None

    def stop(self) -> None:
        """Stop nginx and the master."""
        if self.nginx is not None:
            self.nginx.terminate()
            self.nginx.wait(10)
        self.stop_master()

    def request(
        self, method: str, path: str, body: object = None, **headers: str
    ) -> Response:
        """One request through nginx (headers as keywords, ``_`` for ``-``); return the
        status, the headers (lower-case names) and the body."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            data = None if body is None else json.dumps(body).encode()
            sent = {k.replace("_", "-"): v for k, v in headers.items()}
            if data is not None:
                sent["Content-Type"] = "application/json"
            connection.request(method, API + path, body=data, headers=sent)
            response = connection.getresponse()
            answer = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, answer
        finally:
            connection.close()

    def post(self, name: str, version: str) -> bytes:
        """Post a record through nginx with the API key; return the master's document."""
        status, _, body = self.request(
            "POST", "/builds", {"Name": name, "Version": version, "TimeStamp": 1714564800,
                                "Hostname": "ci-7", "Architecture": "amd64"},
            Authorization=f"Bearer {KEY}",
        )
        assert status == 201, body
        return body

    def _answers(self) -> bool:
        try:
            return self.request("GET", "/openapi.json")[0] == 200
        except OSError:
            return False


def _wait(ready: Callable[[], object]) -> str:
    """Poll ``ready`` until it answers something true (30 s at most); return it as text."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return str(value)
        time.sleep(0.05)
    raise AssertionError("the master or nginx did not start; see the test's output")


@pytest.fixture
def front(tmp_path: Path) -> Iterator[Front]:
    """The master and nginx in front of it, started; stopped after the test."""
    running = Front(tmp_path)
    try:
        running.start()
        yield running
    finally:
        running.stop()


def test_a_record_is_asked_for_once_then_served_by_nginx_alone(front: Front) -> None:
    """A record's first GET is the master's answer; nginx stores it and serves it with the
    master's Content-Type and Cache-Control, a strong ETag and 304s, with the master gone."""
    document = front.post("svc", "1.2.0")
    front.post("web", "3.1.html")
    status, first, body = front.request("GET", "/builds/svc/1.2.0")
    assert (status, body) == (200, document)
    assert (first["content-type"], first["cache-control"]) == (JSON, IMMUTABLE)
    assert (front.stored / "svc" / "1.2.0").read_bytes() == document
    front.request("GET", "/build/web/3.1.html")
    front.stop_master()
    for path in ("/builds/svc/1.2.0", "/build/svc/1.2.0"):
        status, headers, body = front.request("GET", path)
        assert (status, body) == (200, document)
        assert headers["content-type"] == JSON
        assert headers["cache-control"] == IMMUTABLE
        assert headers["etag"].startswith('"')
    etag = headers["etag"]
    assert front.request("GET", "/builds/svc/1.2.0", If_None_Match=etag)[0] == 304
    status, headers, _ = front.request("GET", "/builds/web/3.1.html")
    assert (status, headers["content-type"]) == (200, JSON)
    assert front.request("GET", "/builds?name=svc")[0] == 502
    assert front.request("GET", "/builds/svc/1.2.0/provenance")[0] == 502


def test_what_is_not_a_records_200_goes_to_the_master_and_is_not_stored(front: Front) -> None:
    """Tombstones (410), 404s, 304s, HEADs, listings, DELETE and POST pass through to the
    master and leave nothing stored; a record deleted after it was stored stays served
    until its file is removed, as docs/nginx/records.conf says."""
    front.post("svc", "1")
    front.post("svc", "2")
    status, master, _ = front.request("HEAD", "/builds/svc/1")
    assert status == 200
    assert front.request("GET", "/builds/svc/1", If_None_Match=master["etag"])[0] == 304
    assert front.request("POST", "/builds", {"Name": "svc", "Version": "3"})[0] == 401
    assert front.request("DELETE", "/builds/svc/1?reason=x")[0] == 401
    status, _, body = front.request("DELETE", "/builds/svc/1?reason=bad+tag",
                                    Authorization=f"Bearer {ADMIN_KEY}")
    assert status == 200, body
    for _ in range(2):
        assert front.request("GET", "/builds/svc/1")[0] == 410
        assert front.request("GET", "/builds/svc/9")[0] == 404
    status, headers, body = front.request("GET", "/builds?name=svc")
    assert (status, headers["cache-control"]) == (200, "no-store")
    assert [r["version"] for r in json.loads(body)] == ["2"]
    assert front.request("PUT", "/builds/svc/2")[0] == 405
    assert list(front.stored.rglob("*")) == []

    assert front.request("GET", "/builds/svc/2")[0] == 200
    assert front.request("DELETE", "/builds/svc/2?reason=late",
                         Authorization=f"Bearer {ADMIN_KEY}")[0] == 200
    assert front.request("GET", "/builds/svc/2")[0] == 200
    (front.stored / "svc" / "2").unlink()
    assert front.request("GET", "/builds/svc/2")[0] == 410
