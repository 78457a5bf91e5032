"""Pick TCP ports for the services the tests start."""

from __future__ import annotations

import socket

# Every port handed out stays bound (never listening) by this process until it ends, with
# SO_REUSEADDR. Linux lets a server that also sets SO_REUSEADDR (Twisted, nginx, PostgreSQL,
# Go and Python's http.server all do) listen on it, while the kernel gives the port to no
# other bind(0) or outgoing connection in the meantime. Without this, a port closed after the
# pick went back to the kernel's pool: the next pick, or any process binding port 0 while a
# master was still starting, could take it, and the master then failed to listen (seen in CI).
_reserved: list[socket.socket] = []


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on and no other pick returns.

    The port stays reserved for the test process's lifetime, so start the server on it
    whenever the test needs it (again after a restart, too).
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    probe.bind((host, 0))
    _reserved.append(probe)
    port: int = probe.getsockname()[1]
    return port
