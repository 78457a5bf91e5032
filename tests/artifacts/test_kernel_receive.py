"""Splicing an upload body from a real loopback TCP socket into a file: exactly the declared
bytes arrive, a client that ends or stalls early is told apart from a file that fails."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildbot_farm.artifacts import kernel_receive
from buildbot_farm.artifacts.kernel_receive import BodyEnded, receive_exactly

MIB = 1024 * 1024


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair: (client, server side, non-blocking as Twisted has it)."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        client = socket.create_connection(listening.getsockname())
        server, _ = listening.accept()
    server.setblocking(False)
    yield client, server
    client.close()
    server.close()


def test_exactly_the_declared_bytes_go_into_the_file(
    connection: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    """3 MiB + 1 arrive at the end of the file (after what it held), counted piece by piece;
    the next request's bytes stay in the socket."""
    client, server = connection
    body = os.urandom(3 * MIB + 1)
    counted: list[int] = []
    target = tmp_path / "body"
    target.write_bytes(b"early")
    # The client's side: the body, then the next request's bytes.
    sender = threading.Thread(target=client.sendall, args=(body + b"GET / HTTP/1.1\r\n",))
    sender.start()
    with open(target, "r+b") as file:  # not O_APPEND: splice(2) refuses that, as mkstemp's
        file.seek(0, os.SEEK_END)
        receive_exactly(server.fileno(), file.fileno(), len(body), counted.append)
    sender.join()
    assert target.read_bytes() == b"early" + body
    assert sum(counted) == len(body)
    assert all(counted)
    server.setblocking(True)
    assert server.recv(100) == b"GET / HTTP/1.1\r\n"


def test_a_client_that_ends_early_is_told_apart(
    connection: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    """Half the body, then the client closes: BodyEnded, and the half is in the file."""
    client, server = connection
    client.sendall(b"x" * 1000)
    client.close()
    with open(tmp_path / "body", "wb") as file, pytest.raises(BodyEnded, match="ended"):
        receive_exactly(server.fileno(), file.fileno(), 2000, lambda _: None)
    assert (tmp_path / "body").read_bytes() == b"x" * 1000


def test_a_client_that_stalls_is_given_up_on(
    connection: tuple[socket.socket, socket.socket], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that sends nothing more (its connection open) for STALL_SECONDS: BodyEnded."""
    monkeypatch.setattr(kernel_receive, "STALL_SECONDS", 0.2)
    client, server = connection
    client.sendall(b"x" * 10)
    with open(tmp_path / "body", "wb") as file, pytest.raises(BodyEnded, match="nothing"):
        receive_exactly(server.fileno(), file.fileno(), 20, lambda _: None)


def test_a_file_that_fails_is_an_os_error_not_the_clients(
    connection: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    """A file that cannot be written (opened read-only here) raises its OSError."""
    client, server = connection
    client.sendall(b"x" * 10)
    (tmp_path / "body").write_bytes(b"")
    with open(tmp_path / "body", "rb") as file, pytest.raises(OSError) as raised:
        receive_exactly(server.fileno(), file.fileno(), 10, lambda _: None)
    assert not isinstance(raised.value, BodyEnded)
