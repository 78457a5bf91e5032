"""The agent's HTTP server, and the lease deadline at which it halts itself."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import socket
import socketserver
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable

from buildbot_farm.remote.execs import ProcessTable
from buildbot_farm.remote.handler import BuildletHandler
from buildbot_farm.remote.paths import Workdir
from buildbot_farm.remote.runs import ExecRegistry

if TYPE_CHECKING:
    from buildbot_farm.remote.preemption import PreemptionWatch
    from buildbot_farm.remote.prestart import PrestartedWorker


class BuildletServer(http.server.ThreadingHTTPServer):
    """The agent's HTTP server, holding what its requests share."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], workdir: Workdir, secret: bytes) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.workdir = workdir
        self.secret = secret
        self.processes = ProcessTable()
        self.execs = ExecRegistry()
        self.started = time.monotonic()
        self.preemption: PreemptionWatch | None = None
        self.prestarted: PrestartedWorker | None = None
        self.deadline = LeaseDeadline(self.stop_soon, [workdir.root])
        super().__init__(address, BuildletHandler)

    def server_bind(self) -> None:
        """Bind without the reverse DNS lookup http.server does, which can stall startup."""
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    @property
    def url(self) -> str:
        """The base URL clients use, from the address actually bound."""
        host = self.server_name
        return f"http://[{host}]:{self.server_port}" if ":" in host else f"http://{host}:{self.server_port}"

    def preemption_notice(self) -> dict[str, object] | None:
        """What the preemption watch noticed, or None (also when there is no watch)."""
        return None if self.preemption is None else self.preemption.notice

    def stop_soon(self) -> None:
        """Make serve_forever return, from any thread or a signal handler."""
        threading.Thread(target=self.shutdown, daemon=True).start()


class LeaseDeadline:
    """The moment the agent halts itself unless someone sets a new deadline first.

    A daemon thread waits for it; when it passes, ``expired`` is set and ``on_expiry`` called
    (the agent stops serving). ``remove_owned`` then deletes ``owned`` (its work directory
    and the provider's paths), once the commands are killed.
    """

    def __init__(self, on_expiry: Callable[[], object], owned: list[str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.owned = owned
        self.expired = False
        self._on_expiry = on_expiry
        self._clock = clock
        self._at: float | None = None
        self._lock = threading.Lock()
        self._changed = threading.Event()

    def set(self, seconds: float) -> None:
        """Halt ``seconds`` from now unless set again before."""
        with self._lock:
            self._at = self._clock() + seconds
        self._changed.set()

    def remaining(self) -> float | None:
        """Seconds left (rounded to ms), or None when there is no deadline."""
        with self._lock:
            return None if self._at is None else round(max(self._at - self._clock(), 0.0), 3)

    def start(self) -> None:
        """Start waiting in a daemon thread."""
        threading.Thread(target=self._run, name="lease-deadline", daemon=True).start()

    def _run(self) -> None:
        while True:
            left = self.remaining()
            if left is not None and left <= 0:
                break
            self._changed.wait(left)
            self._changed.clear()
        self.expired = True
        print("farm-remote agent: no coordinator renewed the lease by its deadline; halting and "
              f"removing {', '.join(self.owned)}", file=sys.stderr, flush=True)
        self._on_expiry()

    def remove_owned(self) -> None:
        """Delete the owned paths (files or trees); quiet about ones already gone."""
        for path in self.owned:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

