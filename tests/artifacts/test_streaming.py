"""The repository on its own port over real HTTP on loopback: PUT bodies stream into the
storage's temporary directory, refusals come before the body, downloads keep their headers."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.python import failure

from buildbot_farm import db
from buildbot_farm.artifacts import ArtifactRepository, open_repository, site
from buildbot_farm.artifacts.host import own_port_url
from tests.artifacts.conftest import RunningRepository, basic, curl, run
from tests.harness.twisted_reactor import reactor

MIB = 1024 * 1024
StartOwnPort = Callable[..., Awaitable[RunningRepository]]


async def serve_on_own_port(tmp_path: Path) -> AsyncIterator[StartOwnPort]:
    """Start repositories (``ArtifactRepository`` arguments as keywords, and the storage
    ``root``) on ports of their own; stop them after the one yield."""
    running: list[RunningRepository] = []

    async def start(root: Path | None = None, **settings: Any) -> RunningRepository:
        database = await db.connect(f"sqlite:///{tmp_path / 'farm.sqlite'}", reactor)
        storage = root or tmp_path / "artifacts"
        config = ArtifactRepository(directory=str(storage), **settings)
        repository = await open_repository(config, database, reactor, "test-master",
                                           "http://127.0.0.1:1/")
        port = site.listen(repository, reactor, 0, "127.0.0.1")
        repository.public_url = f"http://127.0.0.1:{port.getHost().port}/"
        started = RunningRepository(repository, database, repository.public_url, storage, port)
        running.append(started)
        return started

    yield start
    for started in running:
        await started.port.stopListening()
        await started.database.stop()


@pytest_twisted.async_yield_fixture
async def own_port(tmp_path: Path) -> AsyncIterator[StartOwnPort]:
    """Repositories on ports of their own (see :func:`serve_on_own_port`)."""
    async for start in serve_on_own_port(tmp_path):
        yield start


class RawClient(protocol.Protocol):
    """A byte-level HTTP client: sends what it is told, records every byte answered."""

    transport: Any  # an ITCPTransport once connected

    def __init__(self) -> None:
        self.received = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        """Keep the answer's bytes."""
        self.received += data

    def connectionLost(self, reason: failure.Failure = protocol.connectionDone) -> None:
        """Note that the server (or the test) closed the connection."""
        self.closed.callback(None)

    async def answer(self, marker: bytes = b"\r\n\r\n", timeout: float = 10.0) -> bytes:
        """Wait until ``marker`` arrived (by default: the end of a response head)."""
        for _ in range(int(timeout / 0.01)):
            if marker in self.received:
                return self.received
            await task.deferLater(reactor, 0.01, lambda: None)
        raise AssertionError(f"no {marker!r} in the answer {self.received!r}")


async def connect(repo: RunningRepository) -> RawClient:
    """A raw connection to the repository's own port."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", repo.port.getHost().port)
    client: RawClient = await connectProtocol(endpoint, RawClient())
    return client


def put_head(path: str, auth: dict[bytes, bytes], *extra: str, length: int | None) -> bytes:
    """The request line and headers of a PUT (chunked when ``length`` is None)."""
    lines = [f"PUT /{path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k.decode()}: {v.decode()}" for k, v in auth.items()]
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


def leftovers(repo: RunningRepository) -> list[str]:
    """What is in the storage's temporary directory."""
    return sorted(os.listdir(repo.repository.storage.tmp_dir))


async def settle(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds (the reactor keeps running meanwhile)."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the condition never held")


@pytest_twisted.ensureDeferred
async def test_streamed_upload_is_served_with_etag_length_and_range(own_port: StartOwnPort) -> None:
    """A PUT on the own port is stored and served with its sha256 ETag, length, and ranges."""
    repo = await own_port()
    payload = os.urandom(3 * MIB + 17)
    sha = hashlib.sha256(payload).hexdigest()
    put = await repo.request("PUT", "bin/hello/3/big.bin", data=payload,
                             headers=basic(7, await repo.token()))
    assert put.code == 201, put.body
    assert put.json()["sha256"] == sha
    assert put.header("location") == repo.url + "bin/hello/3/big.bin"
    got = await repo.request("GET", "bin/hello/3/big.bin")
    assert got.code == 200
    assert got.body == payload
    assert got.length == len(payload)
    assert got.header("etag") == f'"{sha}"'
    assert got.header("last-modified")
    ranged = await repo.request("GET", "bin/hello/3/big.bin",
                                headers={b"range": b"bytes=1048570-2097160"})
    assert ranged.code == 206
    assert ranged.body == payload[1048570:2097161]
    assert ranged.header("content-range") == f"bytes 1048570-2097160/{len(payload)}"
    cached = await repo.request("GET", "bin/hello/3/big.bin",
                                headers={b"if-none-match": f'"{sha}"'.encode()})
    assert cached.code == 304
    assert leftovers(repo) == []


@pytest_twisted.ensureDeferred
async def test_bad_token_is_refused_before_the_body(own_port: StartOwnPort) -> None:
    """A PUT with a wrong token gets 401 and a closed connection after its headers alone."""
    repo = await own_port()
    await repo.token()
    client = await connect(repo)
    client.transport.write(put_head("bin/hello/3/x.bin", basic(7, "wrong"), length=4 * 1024 * MIB))
    head = await client.answer()
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert b"www-authenticate: basic" in head.lower()
    await client.closed
    assert b"nothing was written" in client.received
    assert leftovers(repo) == []
    assert not (repo.root / "bin").exists()


@pytest_twisted.ensureDeferred
async def test_out_of_scope_and_declared_oversize_are_refused_before_the_body(
    own_port: StartOwnPort,
) -> None:
    """403 outside the token's scope and 413 over max_upload_size come before any body byte."""
    repo = await own_port(max_upload_size=MIB)
    auth = basic(7, await repo.token())
    for path, length, status in (("bin/other/3/x.bin", 10, b"403"),
                                 ("bin/hello/3/x.bin", MIB + 1, b"413")):
        client = await connect(repo)
        client.transport.write(put_head(path, auth, length=length))
        head = await client.answer()
        assert head.startswith(b"HTTP/1.1 " + status), head
        await client.closed
    assert leftovers(repo) == []
    assert not (repo.root / "bin").exists()


@pytest_twisted.ensureDeferred
async def test_chunked_body_over_the_limit_is_cut_off(own_port: StartOwnPort) -> None:
    """A chunked upload growing past max_upload_size gets 413 there; nothing is kept."""
    repo = await own_port(max_upload_size=2 * MIB)
    client = await connect(repo)
    client.transport.write(put_head("bin/hello/3/x.bin", basic(7, await repo.token()),
                                    length=None))
    chunk = b"%x\r\n" % (256 * 1024) + b"z" * 256 * 1024 + b"\r\n"
    for _ in range(12):
        if client.closed.called:
            break
        client.transport.write(chunk)
        await task.deferLater(reactor, 0.02, lambda: None)
    head = await client.answer()
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert b"it was cut off there" in await client.answer(b"cut off")
    await client.closed
    assert leftovers(repo) == []
    assert not (repo.root / "bin" / "hello" / "3" / "x.bin").exists()


@pytest_twisted.ensureDeferred
async def test_expect_continue_only_when_accepted(own_port: StartOwnPort) -> None:
    """Expect: 100-continue gets 100 Continue for a good token and a plain 401 for a bad one."""
    repo = await own_port()
    token = await repo.token()
    refused = await connect(repo)
    refused.transport.write(put_head("bin/hello/3/e.bin", basic(7, "bad"),
                                     "Expect: 100-continue", length=5))
    assert (await refused.answer()).startswith(b"HTTP/1.1 401 ")
    await refused.closed
    assert b"100 Continue" not in refused.received
    accepted = await connect(repo)
    accepted.transport.write(put_head("bin/hello/3/e.bin", basic(7, token),
                                      "Expect: 100-continue", length=5))
    assert await accepted.answer() == b"HTTP/1.1 100 Continue\r\n\r\n"
    accepted.transport.write(b"hello")
    final = await accepted.answer(b"\r\n\r\nHTTP/1.1 201 ")
    assert b"201 Created" in final
    accepted.transport.loseConnection()
    assert (repo.root / "bin" / "hello" / "3" / "e.bin").read_bytes() == b"hello"


@pytest_twisted.ensureDeferred
async def test_kernel_received_body_then_the_next_request_on_the_connection(
    own_port: StartOwnPort,
) -> None:
    """A body sent only after 100 Continue (so the kernel moves all of it into the file)
    is stored whole, and a GET pipelined right behind it is answered on the connection."""
    repo = await own_port()
    payload = os.urandom(5 * MIB + 3)
    client = await connect(repo)
    client.transport.write(put_head("bin/hello/3/k.bin", basic(7, await repo.token()),
                                    "Expect: 100-continue", length=len(payload)))
    assert await client.answer() == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.transport.write(payload + b"GET /bin/hello/3/k.bin HTTP/1.1\r\nHost: h\r\n\r\n")
    answers = await client.answer(b"HTTP/1.1 200 OK", timeout=30.0)
    assert b"HTTP/1.1 201 Created" in answers
    await client.answer(payload[-1000:], timeout=30.0)
    client.transport.loseConnection()
    assert (repo.root / "bin" / "hello" / "3" / "k.bin").read_bytes() == payload
    assert leftovers(repo) == []


@pytest_twisted.ensureDeferred
async def test_full_disk_while_the_kernel_receives_is_507_with_nothing_partial(
    own_port: StartOwnPort, tmp_path: Path
) -> None:
    """A body moved by the kernel into a full file system (a 256 KiB tmpfs) gets 507; no
    partial file is left and the repository answers the next request."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode:
        pytest.fail(f"this test needs to mount a tmpfs (run as root): {mounted.stderr}")
    try:
        repo = await own_port(root=small / "artifacts")
        client = await connect(repo)
        client.transport.write(put_head("bin/hello/3/f.bin", basic(7, await repo.token()),
                                        "Expect: 100-continue", length=4 * MIB))
        assert await client.answer() == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.transport.write(b"f" * 4 * MIB)
        head = await client.answer(b"HTTP/1.1 507 ", timeout=30.0)
        assert b"storage is full" in await client.answer(b"full", timeout=30.0), head
        await client.closed
        await settle(lambda: leftovers(repo) == [])
        assert not (repo.root / "bin" / "hello" / "3" / "f.bin").exists()
        assert (await repo.request("GET", "")).code == 200
    finally:
        await settle(lambda: not [t for t in threading.enumerate()
                                  if t.name in ("farm-upload-splice", "farm-upload-sha256")])
        subprocess.run(["umount", str(small)], check=True)


@pytest_twisted.ensureDeferred
async def test_body_grows_in_tmp_dir_while_it_is_sent(own_port: StartOwnPort) -> None:
    """The body is written into the storage's tmp_dir as it arrives, then placed without a copy."""
    repo = await own_port()
    payload = os.urandom(8 * MIB)
    client = await connect(repo)
    client.transport.write(put_head("bin/hello/3/s.bin", basic(7, await repo.token()),
                                    length=len(payload)))
    client.transport.write(payload[: 5 * MIB])
    tmp_dir = repo.repository.storage.tmp_dir

    def spooled() -> int:
        return sum(os.path.getsize(tmp_dir / name) for name in os.listdir(tmp_dir))

    await settle(lambda: spooled() >= 4 * MIB)
    (name,) = leftovers(repo)
    inode = os.stat(tmp_dir / name).st_ino
    client.transport.write(payload[5 * MIB:])
    assert b" 201 " in await client.answer(b"201 Created")
    client.transport.loseConnection()
    stored = repo.root / "bin" / "hello" / "3" / "s.bin"
    assert stored.read_bytes() == payload
    assert os.stat(stored).st_ino == inode
    assert leftovers(repo) == []


@pytest_twisted.ensureDeferred
async def test_interrupted_upload_leaves_nothing_and_retry_succeeds(
    own_port: StartOwnPort,
) -> None:
    """A connection dropped half-way removes the temporary file; the same PUT then succeeds."""
    repo = await own_port()
    auth = basic(7, await repo.token())
    payload = os.urandom(4 * MIB)
    client = await connect(repo)
    client.transport.write(put_head("bin/hello/3/r.bin", auth, length=len(payload)))
    client.transport.write(payload[: 2 * MIB])
    await settle(lambda: bool(leftovers(repo)))
    client.transport.loseConnection()
    await client.closed
    await settle(lambda: leftovers(repo) == [])
    assert not (repo.root / "bin" / "hello" / "3" / "r.bin").exists()
    retry = await repo.request("PUT", "bin/hello/3/r.bin", data=payload, headers=auth)
    assert retry.code == 201, retry.body
    assert (repo.root / "bin" / "hello" / "3" / "r.bin").read_bytes() == payload


@pytest_twisted.ensureDeferred
async def test_streamed_digest_mismatch_keeps_nothing(own_port: StartOwnPort) -> None:
    """A streamed body whose sha256 differs from the announced one gets 400; nothing stays."""
    repo = await own_port()
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    answer = await repo.request(
        "PUT", "bin/hello/3/d.bin", data=b"payload",
        headers={**basic(7, await repo.token()),
                 b"content-digest": f"sha-256=:{wrong}:".encode()},
    )
    assert answer.code == 400
    assert "sha256" in answer.json()["error"]
    assert leftovers(repo) == []
    assert not (repo.root / "bin" / "hello" / "3" / "d.bin").exists()


@pytest_twisted.ensureDeferred
async def test_litmus_basic_suite_on_the_own_port(own_port: StartOwnPort, tmp_path: Path) -> None:
    """litmus's basic WebDAV suite passes in full against the streaming server."""
    repo = await own_port()
    code, output = await run("litmus", repo.url + "bin/hello/3/", "build-7", await repo.token(),
                             env={"TESTS": "basic"}, cwd=tmp_path)
    assert code == 0, output
    assert "of 16 tests run: 16 passed, 0 failed" in output, output
    assert leftovers(repo) == []


@pytest_twisted.ensureDeferred
async def test_curl_and_rclone_on_the_own_port(own_port: StartOwnPort, tmp_path: Path) -> None:
    """curl -T and rclone's webdav backend upload through the streaming server and read back."""
    repo = await own_port()
    token = await repo.token()
    data = tmp_path / "app.bin"
    data.write_bytes(os.urandom(5 * MIB))
    status, body = await curl("-u", f"build-7:{token}", "-T", str(data),
                              repo.url + "bin/hello/3/app.bin")
    assert status == 201, body
    partial = tmp_path / "partial.bin"
    partial.write_bytes(data.read_bytes()[:300_000])
    status, _ = await curl("-C", "-", "-o", str(partial), repo.url + "bin/hello/3/app.bin")
    assert status == 206
    assert partial.read_bytes() == data.read_bytes()
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "b.bin").write_bytes(b"\x00\x01" * 700_000)
    code, obscured = await run("rclone", "obscure", token)
    assert code == 0, obscured
    remote = (f":webdav,url='{repo.url}',user=build-7,pass='{obscured.strip()}',"
              "vendor=other:bin/hello/3")
    code, output = await run("rclone", "copy", "--config", "/dev/null", str(source), remote)
    assert code == 0, output
    back = tmp_path / "back"
    code, output = await run("rclone", "copy", "--config", "/dev/null",
                             f":webdav,url='{repo.url}',vendor=other:bin/hello/3", str(back))
    assert code == 0, output
    assert (back / "sub" / "b.bin").read_bytes() == b"\x00\x01" * 700_000
    assert (back / "app.bin").read_bytes() == data.read_bytes()
    assert leftovers(repo) == []


def test_port_and_interface_are_checked() -> None:
    """A port outside 0-65535 or an empty interface is a configuration error naming it."""
    assert ArtifactRepository(port=8020).problems() == []
    assert any("port must be a TCP port" in p for p in ArtifactRepository(port=70000).problems())
    assert any("interface must be" in p
               for p in ArtifactRepository(port=8020, interface="").problems())


def test_own_port_url_uses_buildbot_url_host() -> None:
    """The own port's default public URL takes buildbotURL's host, else the interface."""
    assert own_port_url("https://ci.example.org/", "0.0.0.0", 8020) == "http://ci.example.org:8020/"
    assert own_port_url(None, "127.0.0.1", 8020) == "http://127.0.0.1:8020/"
    assert own_port_url(None, "::1", 8020) == "http://[::1]:8020/"
