"""The Docker engine's HTTP API over its unix socket, with the standard library only.

What ``farm-remote.pyz container-task`` needs on a worker: create, copy in and out, attach,
start, wait, kill, the change list and removal. Each call opens its own connection
(:class:`http.client.HTTPConnection` over ``AF_UNIX``), so a timer thread can kill a task
while the main thread reads its output. Paths are unversioned: the engine answers with its
own API version, and the create body is written for API 1.41 (Docker 20.10) and later.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

DEFAULT_SOCKET = "/var/run/docker.sock"
CALL_TIMEOUT = 300.0
READ_SIZE = 1 << 20
STDOUT, STDERR = 1, 2


class EngineUnavailable(Exception):
    """The engine could not be reached, or stopped answering; the message says what was done."""


class EngineRefused(Exception):
    """The engine answered a call with an error status; ``status`` and its message."""

    def __init__(self, doing: str, status: int, message: str) -> None:
        super().__init__(f"{doing}: the Docker engine said {status}: {message}")
        self.status = status
        self.message = message


def socket_path(url: str | None) -> str:
    """The socket of ``url`` (``unix:///path``); None: ``DOCKER_HOST`` if a unix URL, else
    the default socket. ValueError for any other URL."""
    if url is None:
        url = os.environ.get("DOCKER_HOST", "")
        if not url.startswith("unix://"):
            return DEFAULT_SOCKET
    if not url.startswith("unix://") or len(url) <= len("unix://"):
        raise ValueError(f"{url!r} is not a unix socket URL (unix:///var/run/docker.sock)")
    return url[len("unix://"):]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DockerSocket:
    """One engine, reached at the unix socket ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.url = f"unix://{path}"

    def _request(self, doing: str, method: str, target: str, body: Any = None,
                 headers: dict[str, str] | None = None, timeout: float | None = CALL_TIMEOUT,
                 ) -> tuple[_UnixConnection, http.client.HTTPResponse]:
        """Send one request; the connection and the response, whose status is < 400."""
        connection = _UnixConnection(self.path, timeout)
        try:
            connection.request(method, target, body=body, headers=headers or {})
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise EngineUnavailable(f"{doing}: the Docker engine at {self.url} does not"
                                    f" answer ({error})") from error
        except BaseException:
            connection.close()
            raise
        if response.status >= 400:
            text = response.read().decode("utf-8", "replace")
            connection.close()
            try:
                message = str(json.loads(text).get("message", text))
            except (ValueError, AttributeError):
                message = text.strip()
            raise EngineRefused(doing, response.status, message)
        return connection, response

    def call(self, doing: str, method: str, path: str, query: dict[str, Any] | None = None,
             body: Any = None, timeout: float | None = CALL_TIMEOUT) -> Any:
        """One call with an optional JSON ``body``; its JSON answer (None when empty)."""
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection, response = self._request(doing, method, _target(path, query), data,
                                             headers, timeout)
        try:
            text = response.read()
        except (OSError, http.client.HTTPException) as error:
            raise EngineUnavailable(f"{doing}: the Docker engine at {self.url} stopped"
                                    f" answering ({error})") from error
        finally:
            connection.close()
        return json.loads(text) if text.strip() else None

    def put_archive(self, cid: str, path: str, chunks: Iterable[bytes]) -> None:
        """Stream the tar ``chunks`` into ``cid`` at ``path``, owned by the container's user."""
        doing = f"copying into the container at {path}"
        target = _target(f"/containers/{cid}/archive", {"path": path, "copyUIDGID": "1"})
        connection, response = self._request(
            doing, "PUT", target, (c for c in chunks if c),
            {"Content-Type": "application/x-tar"}, None)
        response.read()
        connection.close()

    def stream(self, doing: str, method: str, path: str,
               query: dict[str, Any] | None = None) -> Iterator[bytes]:
        """One call whose answer is read as chunks as they come (archives, pull progress)."""
        connection, response = self._request(doing, method, _target(path, query), timeout=None)
        try:
            while True:
                try:
                    chunk = response.read(READ_SIZE)
                except (OSError, http.client.HTTPException) as error:
                    raise EngineUnavailable(f"{doing}: the Docker engine at {self.url} stopped"
                                            f" answering ({error})") from error
                if not chunk:
                    return
                yield chunk
        finally:
            connection.close()

    def get_archive(self, cid: str, path: str, missing_ok: bool = False) -> Iterator[bytes]:
        """The tar of ``path`` in ``cid``, as chunks read as they come; with ``missing_ok`` a
        path the container does not have gives no chunks instead of EngineRefused."""
        chunks = self.stream(f"copying {path} out of the container", "GET",
                             f"/containers/{cid}/archive", {"path": path})
        return self._missing_as_empty(cid, chunks) if missing_ok else chunks

    def _missing_as_empty(self, cid: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            first = next(chunks)
        except StopIteration:
            return
        except EngineRefused as error:  # a missing container is 404 too: only it is an error
            if error.status != 404 or not self.exists(cid, "/"):
                raise
            return
        yield first
        yield from chunks

    def exists(self, cid: str, path: str) -> bool:
        """Whether ``path`` exists in ``cid`` (a symbolic link itself counts). The engine
        answers 404 for a missing container too: the next call on it names that error."""
        try:
            self.call(f"looking for {path} in the container", "HEAD",
                      f"/containers/{cid}/archive", {"path": path})
        except EngineRefused as error:
            if error.status == 404:
                return False
            raise
        return True

    def attach(self, cid: str) -> Iterator[tuple[int, bytes]]:
        """Attach to ``cid``'s output (before it starts): (STDOUT or STDERR, data) pieces
        until it ends. Call ``next`` once before starting the container: that attaches."""
        doing = "reading the task's output"
        query = {"stream": 1, "stdout": 1, "stderr": 1, "logs": 1}
        connection, response = self._request(
            doing, "POST", _target(f"/containers/{cid}/attach", query),
            headers={"Connection": "Upgrade", "Upgrade": "tcp"}, timeout=None)
        yield 0, b""
        stream = response.fp  # after the upgrade: the engine's frames, raw
        try:
            while True:
                try:
                    head = stream.read(8)
                    if len(head) < 8:
                        return
                    size = int.from_bytes(head[4:8], "big")
                    data = stream.read(size)
                except (OSError, http.client.HTTPException) as error:
                    raise EngineUnavailable(f"{doing}: the Docker engine at {self.url} stopped"
                                            f" answering ({error})") from error
                if len(data) < size:
                    return
                yield head[0], data
        finally:
            connection.close()


def _target(path: str, query: dict[str, Any] | None) -> str:
    return f"{path}?{urllib.parse.urlencode(query)}" if query else path
