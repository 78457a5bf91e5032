"""A client that goes away at any point of a GET or PUT leaves no traceback in the log, no
open file and no temporary file, in Buildbot's web server and on the repository's own port.

A raw socket closes at each stage; where the repository waits (on the storage's thread
pool, on the token check), the wait is held open until the server has seen the client go.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import provider

from buildbot_farm.artifacts.paths import Segments
from buildbot_farm.artifacts.store import Grant
from tests.artifacts.conftest import RunningRepository, StartRepository, basic
from tests.artifacts.test_streaming import (
    MIB,
    RawClient,
    StartOwnPort,
    connect,
    put_head,
    serve_on_own_port,
    settle,
)
from tests.harness.twisted_reactor import reactor

SERVERS = ["buildbot-web", "own-port"]
GET_STAGES = ["connected", "half-request-line", "waiting-on-storage", "half-body"]
PUT_STAGES = ["half-headers", "authorising", "half-body", "storing"]


@pytest_twisted.async_yield_fixture
async def own_port(tmp_path: Path) -> AsyncIterator[StartOwnPort]:
    """Repositories on ports of their own."""
    async for start in serve_on_own_port(tmp_path):
        yield start


@pytest_twisted.async_yield_fixture
async def errors() -> AsyncIterator[list[str]]:
    """What is logged as an error (failures included) while the test runs."""
    seen: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        if failure is not None:
            seen.append(failure.getTraceback())
        elif event.get("isError"):
            seen.append(str(event.get("log_format") or event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


class ThreadGate:
    """Holds the first call of the wrapped blocking functions until :meth:`open`."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.left = threading.Event()

    def wrap(self, target: Any, name: str) -> None:
        """Replace ``target.name`` with a gated version."""
        original = getattr(target, name)

        def gated(*args: Any) -> Any:
            self.entered.set()
            self.released.wait(30)
            try:
                return original(*args)
            finally:
                self.left.set()

        setattr(target, name, gated)

    def open(self) -> None:
        """Let the held call (and every later one) go on."""
        self.released.set()


def files_open_under(root: Path) -> list[str]:
    """The files under ``root`` this process has open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            found.append(target)
    return found


async def start_server(kind: str, start_repository: StartRepository,
                       own_port: StartOwnPort) -> RunningRepository:
    """A repository in Buildbot's web server or on its own port."""
    return await (start_repository() if kind == "buildbot-web" else own_port())


async def raw(repo: RunningRepository) -> RawClient:
    """A raw connection to the server of ``repo``."""
    return await connect(repo)


def request_path(repo: RunningRepository, path: str) -> str:
    """The path part of ``repo.url + path``."""
    return "/" + (repo.url + path).split("/", 3)[3]


async def hang_up(client: RawClient) -> None:
    """Close the client's socket and let the server see it."""
    client.transport.loseConnection()
    await client.closed
    await task.deferLater(reactor, 0.1, lambda: None)


async def clean(repo: RunningRepository, errors: list[str], gate: ThreadGate) -> None:
    """The server is back to rest: no temporary or open file, no upload's hashing thread or
    download's sendfile thread, nothing logged as an error.

    The abandoned request finishes its work first: the held call returned, and a request
    sent after it (queued behind it on the thread pool and the database) was answered.
    """
    await settle(lambda: gate.left.is_set() or not gate.entered.is_set())
    probe = await repo.request("GET", "")
    assert probe.code == 200, probe.body
    await task.deferLater(reactor, 0.2, lambda: None)
    tmp_dir = repo.repository.storage.tmp_dir
    await settle(lambda: not os.listdir(tmp_dir) and not files_open_under(repo.root))
    assert errors == []
    await settle(lambda: not [t for t in threading.enumerate()
                              if t.name in ("farm-upload-sha256", "farm-upload-splice",
                                            "farm-artifact-sendfile")])


@pytest.mark.parametrize("stage", GET_STAGES)
@pytest.mark.parametrize("kind", SERVERS)
@pytest_twisted.ensureDeferred
async def test_get_abandoned(
    kind: str, stage: str, start_repository: StartRepository, own_port: StartOwnPort,
    errors: list[str],
) -> None:
    """A GET whose client hangs up leaves nothing behind, whenever it does."""
    repo = await start_server(kind, start_repository, own_port)
    auth = basic(7, await repo.token())
    indexed = await repo.request("PUT", "bin/hello/3/big.bin", data=os.urandom(32 * MIB),
                                 headers=auth)
    assert indexed.code == 201, indexed.body
    # A file the index does not know yet: the GET hashes it on the thread pool.
    (repo.root / "bin" / "hello" / "3" / "new.txt").write_bytes(b"x" * 1000)
    name = "big.bin" if stage == "half-body" else "new.txt"
    line = f"GET {request_path(repo, 'bin/hello/3/' + name)} HTTP/1.1\r\n".encode()
    head = line + b"Host: 127.0.0.1\r\n\r\n"
    client = await raw(repo)
    gate = ThreadGate()
    if stage == "half-request-line":
        client.transport.write(line[: len(line) // 2])
    elif stage == "waiting-on-storage":
        for name in ("thd_stat", "thd_digest"):
            gate.wrap(repo.repository.storage, name)
        client.transport.write(head)
        await settle(gate.entered.is_set)
    elif stage == "half-body":
        client.transport.pauseProducing()
        client.transport.write(head)
        await settle(lambda: bool(files_open_under(repo.root)))
        await task.deferLater(reactor, 0.2, lambda: None)
    await hang_up(client)
    gate.open()
    await clean(repo, errors, gate)
    again = await repo.request("GET", "bin/hello/3/new.txt")
    assert again.code == 200
    assert again.body == b"x" * 1000


@pytest.mark.parametrize("stage", PUT_STAGES)
@pytest.mark.parametrize("kind", SERVERS)
@pytest_twisted.ensureDeferred
async def test_put_abandoned(
    kind: str, stage: str, start_repository: StartRepository, own_port: StartOwnPort,
    errors: list[str],
) -> None:
    """A PUT whose client hangs up leaves nothing behind (a complete body may be kept)."""
    repo = await start_server(kind, start_repository, own_port)
    auth = basic(7, await repo.token())
    payload = os.urandom(4 * MIB)
    head = put_head(request_path(repo, "bin/hello/3/up.bin")[1:], auth, length=len(payload))
    client = await raw(repo)
    gate = ThreadGate()
    held: defer.Deferred[None] = defer.Deferred()
    if stage == "half-headers":
        client.transport.write(head[: len(head) // 2])
    elif stage == "authorising":
        hold_authorisation(repo, held)
        client.transport.write(head)
        await task.deferLater(reactor, 0.2, lambda: None)
    elif stage == "half-body":
        client.transport.write(head + payload[: len(payload) // 2])
        await task.deferLater(reactor, 0.3, lambda: None)
    elif stage == "storing":
        for name in ("thd_store", "thd_adopt"):
            gate.wrap(repo.repository.storage, name)
        client.transport.write(head + payload)
        await settle(gate.entered.is_set)
    await hang_up(client)
    gate.open()
    held.callback(None)
    await clean(repo, errors, gate)
    stored = repo.root / "bin" / "hello" / "3" / "up.bin"
    if stage == "storing":
        assert stored.read_bytes() == payload
    else:
        assert not stored.exists()


def hold_authorisation(repo: RunningRepository, held: defer.Deferred[None]) -> None:
    """Make the repository's token check wait for ``held``."""
    original = repo.repository.authorise

    async def authorise(header: bytes | None, segments: Segments) -> Grant:
        await held
        return await original(header, segments)

    repo.repository.authorise = authorise  # type: ignore[method-assign]
