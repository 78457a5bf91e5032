"""Clients of Docker engines, local or remote (TCP with TLS client certificates).

``engine_api`` is the one way the farm makes a docker-py client of an engine named by URL.
A TLS client ignores the environment's CA bundle settings (``REQUESTS_CA_BUNDLE``,
``CURL_CA_BUNDLE``): requests lets those override a session's own CA file, so with them set
every TLS connection to an engine with a private CA would fail its verification.

``output_frames`` reads a container's attach socket. docker-py's own reader polls the
socket's file descriptor before each read, which blocks for good on a TLS socket whose next
frame is already decrypted in the TLS buffer: a buildlet agent that prints its ready line and
then nothing would never be heard from an engine on ``tcp://`` with TLS.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
from docker.constants import MINIMUM_DOCKER_API_VERSION

__all__ = ["TLSFiles", "engine_api", "output_frames", "shut_down"]

FRAME_HEADER = struct.Struct(">BxxxL")  # stream (1 stdout, 2 stderr), payload size


@dataclass(frozen=True)
class TLSFiles:
    """Paths of PEM files: the CA the engine's certificate must chain to, the client's
    certificate and its key."""

    ca: str
    cert: str
    key: str

    def config(self) -> docker.tls.TLSConfig:
        """docker-py's TLS settings: present ``cert``, verify the engine against ``ca``."""
        return docker.tls.TLSConfig(client_cert=(self.cert, self.key), ca_cert=self.ca, verify=True)


def engine_api(
    url: str | None, tls: TLSFiles | None = None, timeout: float = 60.0
) -> docker.APIClient:
    """A client of the engine at ``url`` (None: ``DOCKER_HOST``, else the local socket).

    It asks the engine its API version, so it raises docker-py's errors when the engine does
    not answer within ``timeout`` seconds.
    """
    if url is None:
        return docker.APIClient(version="auto", timeout=timeout, **docker.utils.kwargs_from_env())
    if tls is None:
        return docker.APIClient(base_url=url, version="auto", timeout=timeout)
    probe = _tls_client(url, tls, MINIMUM_DOCKER_API_VERSION, timeout)
    try:
        version = str(probe.version(api_version=False)["ApiVersion"])
    finally:
        probe.close()
    return _tls_client(url, tls, version, timeout)


def _tls_client(url: str, tls: TLSFiles, version: str, timeout: float) -> docker.APIClient:
    api = docker.APIClient(base_url=url, tls=tls.config(), version=version, timeout=timeout)
    api.trust_env = False  # the session's CA file, not the environment's bundle
    return api


def output_frames(sock: Any) -> Iterator[tuple[int, bytes]]:
    """The ``(stream, payload)`` frames of a non-TTY container's attach socket (blocking
    reads, no poll: see the module's docstring), until the socket ends."""
    while True:
        header = _read_exactly(sock, FRAME_HEADER.size)
        if len(header) < FRAME_HEADER.size:
            return
        stream, size = FRAME_HEADER.unpack(header)
        payload = _read_exactly(sock, size)
        yield stream, payload
        if len(payload) < size:
            return


def shut_down(sock: Any) -> None:
    """End ``sock`` for reading and writing, which wakes a thread blocked reading it.

    docker-py hands out an SSL socket or a ``SocketIO`` over the connection; shutting down a
    duplicate of its descriptor ends the connection beneath either. Quiet when it is closed.
    """
    with contextlib.suppress(OSError, ValueError):
        duplicate = socket.socket(fileno=os.dup(sock.fileno()))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        finally:
            duplicate.close()


def _read_exactly(sock: Any, size: int) -> bytes:
    """``size`` bytes from ``sock``, fewer only where it ended."""
    data = b""
    read = sock.recv if hasattr(sock, "recv") else sock.read
    while len(data) < size:
        chunk = read(size - len(data))
        if not chunk:
            break
        data += chunk
    return data
