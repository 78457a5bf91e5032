"""``CountingRelay``: a TCP relay on loopback that counts the bytes it carries each way.

A test puts it between a worker and its master to see what crossed the connection: what the
master received (``to_target``) and what it sent (``to_client``).
"""

from __future__ import annotations

import contextlib
import socket
import threading


class CountingRelay:
    """Relays ``address``:``port`` (a free port) to ``address``:``target_port``; ``stop``
    after. ``address`` is loopback unless a test made another one."""

    def __init__(self, target_port: int, address: str = "127.0.0.1") -> None:
        self.address = address
        self.target_port = target_port
        self.to_target = 0
        self.to_client = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server((address, 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def counts(self) -> tuple[int, int]:
        """(bytes to the target, bytes to the clients) so far."""
        with self._lock:
            return self.to_target, self.to_client

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            target = socket.create_connection((self.address, self.target_port))
            self._sockets += [client, target]
            threading.Thread(target=self._pipe, args=(client, target, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(target, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, to_target: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
                with self._lock:
                    if to_target:
                        self.to_target += len(data)
                    else:
                        self.to_client += len(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        """Stop listening and close every connection carried."""
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
