"""Large raw answers through the coordinator's proxy go socket to socket in a thread.

The thread's part (``relay_exactly``) is tested on socket pairs; the proxy's use of it with
a real coordinator, a real agent and a raw HTTP client that keeps its connection, or leaves
in the middle of the body.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, task, threads
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from zope.interface import provider

from buildbot_farm.compat import twisted_web
from buildbot_farm.leases import bulk_relay, keys, proxy
from buildbot_farm.leases.client import PROXY_HEADER
from tests.harness.twisted_reactor import reactor
from tests.leases.conftest import SECRET, RunningCoordinator, StartCoordinator

MIB = 1 << 20


def _pair() -> tuple[socket.socket, socket.socket]:
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    return left, right


def _drain(sock: socket.socket, into: bytearray) -> None:
    sock.setblocking(True)
    while block := sock.recv(MIB):
        into += block


def test_the_relay_moves_exactly_the_length_and_leaves_the_rest() -> None:
    """8 MiB move across; the 5 bytes after them stay unread in the source."""
    payload = os.urandom(8 * MIB)
    source_writer, source = _pair()
    target, target_reader = _pair()
    source_writer.setblocking(True)
    writer = threading.Thread(target=source_writer.sendall, args=(payload + b"after",))
    received = bytearray()
    reader = threading.Thread(target=_drain, args=(target_reader, received))
    writer.start()
    reader.start()
    bulk_relay.relay_exactly(source.fileno(), target.fileno(), len(payload))
    target.close()
    writer.join()
    reader.join()
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    source.setblocking(True)
    assert source.recv(100) == b"after"


def test_slow_sides_are_waited_for_whatever_python_s_default_timeout() -> None:
    """An agent that sends in pieces with pauses, and a client that reads slowly, both get
    waited for, every byte in order: Python's default socket timeout (here 10 ms, far
    shorter than the pauses) does not turn a pause into an error."""
    pieces = [os.urandom(size) for size in (1, 300 * 1024, 7, 2 * MIB)]
    source_writer, source = _pair()
    target, target_reader = _pair()
    source_writer.setblocking(True)

    def trickle() -> None:
        for piece in pieces:
            source_writer.sendall(piece)
            threading.Event().wait(0.05)

    def read_slowly(into: bytearray) -> None:
        target_reader.setblocking(True)
        while block := target_reader.recv(64 * 1024):
            into += block
            threading.Event().wait(0.001)

    received = bytearray()
    writer = threading.Thread(target=trickle, daemon=True)
    reader = threading.Thread(target=read_slowly, args=(received,), daemon=True)
    writer.start()
    reader.start()
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(0.01)
    try:
        bulk_relay.relay_exactly(source.fileno(), target.fileno(), sum(map(len, pieces)))
    finally:
        socket.setdefaulttimeout(previous)
        target.close()
        source.close()
    writer.join(10)
    reader.join(10)
    assert bytes(received) == b"".join(pieces)


def test_a_source_ending_early_is_reported() -> None:
    """The source closing after 1 MiB of the 2 MiB promised is ``SourceEnded``."""
    source_writer, source = _pair()
    target, target_reader = _pair()
    received = bytearray()
    reader = threading.Thread(target=_drain, args=(target_reader, received))
    reader.start()
    source_writer.setblocking(True)

    def write_and_close() -> None:
        source_writer.sendall(os.urandom(MIB))
        source_writer.close()

    writer = threading.Thread(target=write_and_close)
    writer.start()
    with pytest.raises(bulk_relay.SourceEnded, match="bytes to come"):
        bulk_relay.relay_exactly(source.fileno(), target.fileno(), 2 * MIB)
    target.close()
    writer.join()
    reader.join()
    assert len(received) == MIB


def test_a_target_gone_is_reported() -> None:
    """The target's peer closing is ``TargetGone``, not an OSError."""
    source_writer, source = _pair()
    target, target_reader = _pair()
    target_reader.close()
    source_writer.setblocking(True)
    source_writer.sendall(b"x" * 1000)
    with pytest.raises(bulk_relay.TargetGone):
        bulk_relay.relay_exactly(source.fileno(), target.fileno(), 1000)


def test_a_source_that_stops_sending_ends_the_relay_after_the_stall_limit() -> None:
    """A source that sends 1,000 of the 2,000 bytes promised and then nothing, its connection
    kept open, is ``SourceEnded`` once the stall limit has passed; the 1,000 went on."""
    source_writer, source = _pair()
    target, target_reader = _pair()
    source_writer.sendall(b"x" * 1000)
    started = time.monotonic()
    with pytest.raises(bulk_relay.SourceEnded, match=r"sent nothing for 0\.2 s, with 1000 bytes"):
        bulk_relay.relay_exactly(source.fileno(), target.fileno(), 2000, stall_limit=0.2)
    assert 0.15 < time.monotonic() - started < 10
    assert target_reader.recv(4096) == b"x" * 1000
    source_writer.close()


def test_a_target_that_stops_taking_ends_the_relay_after_the_stall_limit() -> None:
    """A target whose peer reads nothing, its connection kept open, while 16 MiB wait for it,
    is ``TargetGone`` once the stall limit has passed."""
    source_writer, source = _pair()
    target, target_reader = _pair()
    source_writer.setblocking(True)

    def write() -> None:
        with contextlib.suppress(OSError):  # the source closes under it once the relay gives up
            source_writer.sendall(os.urandom(16 * MIB))

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    started = time.monotonic()
    with pytest.raises(bulk_relay.TargetGone, match=r"took nothing for 0\.2 s"):
        bulk_relay.relay_exactly(source.fileno(), target.fileno(), 16 * MIB, stall_limit=0.2)
    assert 0.15 < time.monotonic() - started < 10
    source.close()
    writer.join(10)
    assert not writer.is_alive()
    target_reader.close()


def test_relays_run_at_most_their_number_at_once() -> None:
    """Places are taken up to ``most_at_once``; a place given back can be taken again."""
    relays = bulk_relay.BulkRelays(most_at_once=2)
    assert relays.take()
    assert relays.take()
    assert not relays.take()
    relays.give_back()
    assert relays.take()
    assert relays.running == 2


@pytest_twisted.ensureDeferred
async def test_unsent_bytes_reads_a_real_connections_buffer() -> None:
    """Tripwire for the twisted internals ``unsent_bytes`` reads (dataBuffer, offset,
    _tempDataLen): what a connection's peer does not read counts, and drains to zero."""
    accepted: defer.Deferred[Any] = defer.Deferred()

    class Keep(protocol.Protocol):
        def connectionMade(self) -> None:
            accepted.callback(self.transport)

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Keep), interface="127.0.0.1")
    peer = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        transport = await accepted
        assert twisted_web.unsent_bytes(transport) == 0
        transport.write(b"x" * (16 * MIB))  # more than loopback's socket buffers take
        await task.deferLater(reactor, 0.05)
        assert twisted_web.unsent_bytes(transport) > 0
        peer.setblocking(False)
        while twisted_web.unsent_bytes(transport):
            try:
                peer.recv(4 * MIB)
            except BlockingIOError:
                await task.deferLater(reactor, 0.01)
    finally:
        peer.close()
        await port.stopListening()


def _auth(user: str = "user-alice") -> str:
    token = f"{user}:{keys.user_key(SECRET, user)}".encode()
    return "Basic " + base64.b64encode(token).decode()


async def _buildlet_with_file(running: RunningCoordinator, size: int) -> tuple[str, bytes]:
    alice = running.client()
    name = (await alice.create("local"))["Name"]
    payload = os.urandom(size)
    await alice.put_file(name, io.BytesIO(payload), "big/data.bin")
    return name, payload


class CountedRelays(bulk_relay.BulkRelays):
    """Relays that note the length each one was given."""

    def __init__(self, **limits: Any) -> None:
        super().__init__(**limits)
        self.lengths: list[int] = []

    def run(self, reactor: Any, source: int, target: int, length: int) -> defer.Deferred[None]:
        """Note ``length``, then relay."""
        self.lengths.append(length)
        return super().run(reactor, source, target, length)


def _download_started(url: str, name: str, first: int) -> tuple[socket.socket, bytes]:
    """A raw client that asked for ``big/data.bin`` and has read at least ``first`` bytes of
    the answer. Its receive buffer is small, so what it leaves unread holds the sender back."""
    address = urllib.parse.urlsplit(url)
    raw = socket.create_connection((address.hostname, address.port), timeout=30)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    raw.sendall(
        f"GET /read?path=big/data.bin HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {_auth()}\r\n{PROXY_HEADER}: {name}\r\n\r\n".encode()
    )
    got = b""
    while len(got) < first:
        got += raw.recv(64 * 1024)
    return raw, got


def _body_of(raw: socket.socket, got: bytes, length: int) -> bytes:
    """Read on from ``got`` until ``length`` body bytes or the connection's end; the body."""
    with raw:
        while True:
            body = got.partition(b"\r\n\r\n")[2]
            if len(body) >= length:
                return body
            try:
                block = raw.recv(MIB)
            except ConnectionResetError:
                return body
            if not block:
                return body
            got += block


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait on the reactor until ``condition()`` holds; fail after ``seconds``."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await task.deferLater(reactor, 0.02)
    assert condition()


def _relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "farm-proxy-relay"]


def _assert_cut_for(body: bytes, payload: bytes, log: _Log, reason: str) -> None:
    """The client got a true beginning of ``payload``, cut short, and the log says ``reason``
    (not as an error)."""
    assert len(body) < len(payload)
    assert payload.startswith(body)
    assert any(reason in text for text in log.texts)
    assert not log.errors, [formatEvent(e) for e in log.errors]


class _Log:
    """What the coordinator logs meanwhile: every message's text, and the errors."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.errors: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Collect while the block runs."""

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            self.texts.append(formatEvent(event) or "")
            if event.get("isError") or event.get("log_failure") is not None:
                self.errors.append(event)

        globalLogPublisher.addObserver(observe)
        try:
            yield
        finally:
            globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_a_large_read_goes_by_the_thread_and_the_connection_serves_the_next_request(
    start_coordinator: StartCoordinator
) -> None:
    """A 24 MiB ``/read`` arrives whole through the relay thread, on a kept-alive connection
    that then answers another request."""
    relays = CountedRelays()
    relayed = relays.lengths
    running = await start_coordinator(relays=relays)
    name, payload = await _buildlet_with_file(running, 24 * MIB)
    address = urllib.parse.urlsplit(running.url)

    def two_requests() -> tuple[int, bytes, int, bytes]:
        assert address.hostname is not None
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        headers = {"Authorization": _auth(), PROXY_HEADER: name}
        connection.request("GET", "/read?path=big/data.bin", headers=headers)
        first = connection.getresponse()
        body = first.read()
        connection.request("GET", "/buildlet/list", headers={"Authorization": _auth()})
        second = connection.getresponse()
        listing = second.read()
        connection.close()
        return first.status, body, second.status, listing

    status, body, next_status, listing = await threads.deferToThread(two_requests)
    assert status == 200
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()
    assert next_status == 200
    assert name.encode() in listing
    assert len(relayed) == 1
    # The body bytes that came in the agent's first read with the head go through the reactor;
    # the rest, which may be all of it, goes by the thread.
    assert 0 < relayed[0] <= len(payload)
    assert relayed[0] > len(payload) - proxy.BULK_AT_LEAST


async def _serving_32_mib(
    start_coordinator: StartCoordinator, **limits: Any
) -> tuple[CountedRelays, RunningCoordinator, str, bytes]:
    """A coordinator whose relays have ``limits``, and a buildlet of it with a 32 MiB file."""
    relays = CountedRelays(**limits)
    running = await start_coordinator(relays=relays)
    name, payload = await _buildlet_with_file(running, 32 * MIB)
    return relays, running, name, payload


async def _read_whole(running: RunningCoordinator, name: str) -> bytes:
    received: list[bytes] = []
    await running.client().get_stream(name, "/read", {"path": "big/data.bin"}, received.append)
    return b"".join(received)


@pytest_twisted.ensureDeferred
async def test_a_client_leaving_in_the_middle_of_a_bulk_relayed_body(
    start_coordinator: StartCoordinator
) -> None:
    """A client that reads 1 MiB of 32 MiB and closes: the relay ends, nothing is logged as
    an error, and the coordinator goes on serving the same buildlet."""
    relays, running, name, payload = await _serving_32_mib(start_coordinator)
    log = _Log()
    with log.watching():
        raw, head = await threads.deferToThread(_download_started, running.url, name, MIB)
        raw.close()
        assert head.startswith(b"HTTP/1.1 200")
        # the place is given back on the reactor once the thread's result arrives there
        await _until(lambda: relays.running == 0 and not _relay_threads())
        assert hashlib.sha256(await _read_whole(running, name)).digest() == \
            hashlib.sha256(payload).digest()
    assert len(relays.lengths) == 2
    assert not log.errors, [formatEvent(e) for e in log.errors]


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_let_go_after_the_stall_limit(
    start_coordinator: StartCoordinator
) -> None:
    """A client that reads 1 MiB of 32 MiB and then nothing, keeping its connection open (a
    lessee holding a relay thread): after the stall limit the coordinator cuts its answer,
    frees the thread, says why in its log (not as an error), and serves the file whole
    again."""
    relays, running, name, payload = await _serving_32_mib(start_coordinator, stall_limit=0.5)
    log = _Log()
    with log.watching():
        raw, got = await threads.deferToThread(_download_started, running.url, name, MIB)
        assert relays.running == 1
        await _until(lambda: relays.running == 0 and not _relay_threads())
        body = await threads.deferToThread(_body_of, raw, got, len(payload))
        assert hashlib.sha256(await _read_whole(running, name)).digest() == \
            hashlib.sha256(payload).digest()
    _assert_cut_for(body, payload, log, "the client took nothing for 0.5 s")


@pytest_twisted.ensureDeferred
async def test_an_agent_that_stops_sending_is_let_go_after_the_stall_limit(
    start_coordinator: StartCoordinator
) -> None:
    """An agent stopped (SIGSTOP, which a lessee can send its own buildlet) in the middle of a
    32 MiB body: after the stall limit the coordinator cuts the client's answer, frees the
    relay thread and says why in its log (not as an error)."""
    relays, running, name, payload = await _serving_32_mib(start_coordinator, stall_limit=1.0)
    lease = await running.coordinator.use("user-alice", name)
    agent = json.loads(lease.handle)["pid"]
    log = _Log()
    with log.watching():
        raw, got = await threads.deferToThread(_download_started, running.url, name, MIB)
        os.killpg(agent, signal.SIGSTOP)
        try:
            body = await threads.deferToThread(_body_of, raw, got, len(payload))
            await _until(lambda: relays.running == 0 and not _relay_threads())
        finally:
            os.killpg(agent, signal.SIGCONT)
    _assert_cut_for(body, payload, log, "the agent sent nothing for 1 s")


@pytest_twisted.ensureDeferred
async def test_beyond_its_relay_threads_the_reactor_relays(
    start_coordinator: StartCoordinator
) -> None:
    """With one relay thread, held by a client that has paused, a second large download is
    relayed by the reactor, whole, meanwhile; then the first one finishes whole too."""
    relays, running, name, payload = await _serving_32_mib(start_coordinator, most_at_once=1)
    raw, got = await threads.deferToThread(_download_started, running.url, name, MIB)
    assert relays.running == 1
    digest = hashlib.sha256(payload).digest()
    assert hashlib.sha256(await _read_whole(running, name)).digest() == digest
    assert len(relays.lengths) == 1
    assert relays.running == 1
    body = await threads.deferToThread(_body_of, raw, got, len(payload))
    assert hashlib.sha256(body).digest() == digest
    await _until(lambda: relays.running == 0)


@pytest_twisted.ensureDeferred
async def test_small_answers_go_through_the_reactor(
    start_coordinator: StartCoordinator
) -> None:
    """Below ``BULK_AT_LEAST`` a body is relayed by the reactor (a thread costs more than it
    saves there), and arrives the same."""
    relays = CountedRelays()
    relayed = relays.lengths
    running = await start_coordinator(relays=relays)
    name, payload = await _buildlet_with_file(running, proxy.BULK_AT_LEAST - 1)
    received: list[bytes] = []
    await running.client().get_stream(name, "/read", {"path": "big/data.bin"}, received.append)
    assert b"".join(received) == payload
    assert relayed == []
