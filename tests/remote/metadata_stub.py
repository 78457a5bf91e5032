"""A stand-in cloud metadata service on 127.0.0.1 for the preemption detectors' tests."""

from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SeenRequest:
    """One request the stub answered: method, path with query, and headers (names lower-case)."""

    method: str
    path: str
    headers: dict[str, str]


class MetadataStub:
    """Answers ``(method, path)`` with what :meth:`answer` set (404 otherwise), in a thread.

    ``path`` includes the query string. Every request is kept in ``requests``. Use it as a
    context manager; :meth:`stop` takes it down (later requests are refused). ``port`` 0
    picks a free one.
    """

    def __init__(self, port: int = 0) -> None:
        self.answers: dict[tuple[str, str], tuple[int, bytes]] = {}
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                with stub._lock:
                    stub.requests.append(
                        SeenRequest(self.command, self.path,
                                    {k.lower(): v for k, v in self.headers.items()})
                    )
                    status, body = stub.answers.get((self.command, self.path), (404, b"no"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = _serve  # noqa: N815 (http.server's names)

            def log_message(self, format: str, *args: Any) -> None:
                """Keep test output quiet."""

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def answer(self, method: str, path: str, status: int, body: bytes | str) -> None:
        """From now on, answer ``method path`` with ``status`` and ``body``."""
        with self._lock:
            data = body.encode() if isinstance(body, str) else body
            self.answers[(method, path)] = (status, data)

    def seen(self, method: str, path: str) -> list[SeenRequest]:
        """The requests for ``method path`` so far."""
        with self._lock:
            return [r for r in self.requests if (r.method, r.path) == (method, path)]

    def stop(self) -> None:
        """Stop answering and close the port."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> MetadataStub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
