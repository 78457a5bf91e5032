"""Buildbot's data events as its web UI gets them: pushed on the master's websocket (``/ws``).

A benchmark that polls the REST API to see when something happened is only as precise as its
poll interval, and each poll is work for the master it measures. The UI instead subscribes
(``{"cmd": "startConsuming", "path": "workers/*/*"}``) and the master pushes each event
(``{"k": "workers/3/connected", "m": {...}}``) as it happens; :class:`MasterEvents` does the
same, with the client side of RFC 6455 written out (text frames, masked as a client must).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
Event = tuple[float, str, dict[str, Any]]


class MasterEvents:
    """The events of ``paths`` from the master at ``127.0.0.1:port``, each with the
    ``time.perf_counter()`` of its arrival, collected by a thread until :meth:`close`."""

    def __init__(self, port: int, paths: list[str], timeout: float = 30.0) -> None:
        self.events: list[Event] = []
        self._arrived = threading.Condition()
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self._sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            data = self._sock.recv(4096)
            if not data:
                raise ConnectionError("the master closed its websocket during the handshake")
            head += data
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"the master refused its websocket: {head[:200]!r}")
        self._buffer = head.split(b"\r\n\r\n", 1)[1]
        self._sock.settimeout(None)
        for number, path in enumerate(paths):
            self._send(TEXT, json.dumps({"cmd": "startConsuming", "path": path, "_id": number}))
        self._reader = threading.Thread(target=self._read_all, daemon=True)
        self._reader.start()

    def wait(self, matches: Callable[[str, dict[str, Any]], bool], since: int, what: str,
             timeout: float) -> Event:
        """The first event from index ``since`` on that ``matches(key, message)``."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for event in self.events[since:]:
                    if matches(event[1], event[2]):
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise RuntimeError(f"no websocket event of {what} within {timeout:g} s")
                self._arrived.wait(left)

    def close(self) -> None:
        """Hang up (the reader thread ends with the connection)."""
        self._sock.close()

    def _send(self, opcode: int, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        if len(payload) < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload))
        else:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(header + mask + masked)

    def _read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("the master closed its websocket")
            self._buffer += data
        taken, self._buffer = self._buffer[:size], self._buffer[size:]
        return taken

    def _frame(self) -> tuple[int, bool, bytes]:
        first, second = self._read(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._read(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._read(8))
        return first & 0x0F, bool(first & 0x80), self._read(size)

    def _read_all(self) -> None:
        message = b""
        try:
            while True:
                opcode, final, payload = self._frame()
                if opcode == CLOSE:
                    return
                if opcode == PING:
                    self._send(PONG, payload.decode(errors="replace"))
                    continue
                message += payload
                if not final:
                    continue
                arrived = time.perf_counter()
                parsed = json.loads(message)
                message = b""
                if "k" in parsed:
                    with self._arrived:
                        self.events.append((arrived, str(parsed["k"]), parsed.get("m") or {}))
                        self._arrived.notify_all()
        except (OSError, ConnectionError):
            return
        finally:
            with self._arrived:
                self._arrived.notify_all()
