"""Sending a file to a real loopback TCP socket by sendfile: corked while it goes out (full
segments only, as nginx's ``tcp_nopush``), uncorked after its last byte, and a client that
goes away is told apart."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildbot_farm.artifacts.kernel_send import ClientGone, send_corked

MIB = 1024 * 1024
# Far more than small socket buffers hold: the send waits for the client to read.
SIZE = 16 * MIB + 17


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair with small buffers: (client, server side, non-blocking
    with TCP_NODELAY as Twisted has it)."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.connect(listening.getsockname())
        server, _ = listening.accept()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server.setblocking(False)
    yield client, server
    client.close()
    server.close()


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """An open file of SIZE bytes (random head, zeros after) and its content."""
    path = tmp_path / "artifact"
    with open(path, "wb") as file:
        file.write(os.urandom(4096))
        file.truncate(SIZE)
    source = os.open(path, os.O_RDONLY)
    yield source, path.read_bytes()
    os.close(source)


def corked(server: socket.socket) -> bool:
    """Whether ``server`` holds partial segments back (TCP_CORK)."""
    return bool(server.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))


def receive(client: socket.socket, size: int) -> bytes:
    """Read ``size`` bytes from ``client``."""
    pieces, left = [], size
    while left:
        piece = client.recv(min(left, MIB))
        assert piece, "the connection ended early"
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)


def start_sending(
    source: int, server: socket.socket
) -> tuple[threading.Thread, list[BaseException]]:
    """Send the whole file ``source`` on ``server`` with :func:`send_corked` in a thread;
    the thread and the list its exception (if any) lands in, for the test to check."""
    errors: list[BaseException] = []

    def send() -> None:
        try:
            send_corked(source, server, 0, SIZE)
        except BaseException as e:  # the test thread reports it
            errors.append(e)

    sender = threading.Thread(target=send)
    sender.start()
    return sender, errors


def test_the_file_goes_out_corked_and_the_socket_is_uncorked_after(
    connection: tuple[socket.socket, socket.socket], stored: tuple[int, bytes]
) -> None:
    """While the client has not read, the socket is corked; after the last byte it is not
    (its tail flushed), and the client has the file exactly."""
    client, server = connection
    source, content = stored
    sender, errors = start_sending(source, server)
    deadline = time.monotonic() + 10
    while not corked(server) and time.monotonic() < deadline and sender.is_alive():
        time.sleep(0.001)
    assert corked(server), "the socket was not corked while the file went out"
    assert receive(client, SIZE) == content
    sender.join(10)
    assert not sender.is_alive()
    assert errors == []
    assert not corked(server)


def test_a_client_that_goes_away_is_told_apart(
    connection: tuple[socket.socket, socket.socket], stored: tuple[int, bytes]
) -> None:
    """A client that resets the connection mid-file: ClientGone, nothing else raised by
    the uncorking of a dead socket."""
    client, server = connection
    source, _ = stored
    sender, errors = start_sending(source, server)
    receive(client, MIB)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    sender.join(10)
    assert not sender.is_alive()
    assert [type(e) for e in errors] == [ClientGone]
