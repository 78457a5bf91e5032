"""The agent's HTTP request handler: checks the secret, routes each request, answers JSON errors."""

from __future__ import annotations

import contextlib
import hmac
import http.server
import json
import os
import platform
import socket
import stat
import time
import traceback
import urllib.parse
from http import HTTPStatus
from typing import TYPE_CHECKING, Callable, ClassVar

from buildbot_farm.remote.archives import unpack_into, walk_tree, write_tgz
from buildbot_farm.remote.bodies import CHUNK, ChunkedStream, RequestBody, gathered_chunks
from buildbot_farm.remote.errors import (
    OS_ERROR_STATUS,
    AgentError,
    flag,
    parse_mode,
    single,
)
from buildbot_farm.remote.execs import ExecRequest
from buildbot_farm.remote.files import (
    describe_entry,
    go_ls_line,
    remove_path_or_entries,
    write_atomically,
)
from buildbot_farm.remote.paths import existing
from buildbot_farm.remote.protocol import (
    EXEC_ID_HEADER,
    EXEC_OFFSET_HEADER,
    FRAMES_TYPE,
    FRAMING_HEADER,
    MAX_DEADLINE,
    PREEMPTED_HEADER,
    PROTOCOL_VERSION,
    SECRET_HEADER,
    VERSION,
    frame,
)
from buildbot_farm.remote.runs import ExecRun

if TYPE_CHECKING:
    from buildbot_farm.remote.server import BuildletServer

MAX_FORM_BYTES = 1024 * 1024
IDLE_TIMEOUT = 600.0  # seconds a connection may idle, or a client not read, before it is dropped


class BuildletHandler(http.server.BaseHTTPRequestHandler):
    """Serves one client connection: checks the secret, then routes each request."""

    server: BuildletServer
    protocol_version = "HTTP/1.1"
    server_version = f"buildlet-agent/{VERSION}"
    timeout = IDLE_TIMEOUT
    disable_nagle_algorithm = True  # output chunks must leave at once
    _body: RequestBody | None = None
    _started = False

    @property
    def body(self) -> RequestBody:
        """The request body; set before any endpoint runs."""
        assert self._body is not None
        return self._body

    def _dispatch(self) -> None:
        self._body, self._started = None, False
        url = urllib.parse.urlsplit(self.path)
        try:
            self._check_secret()
            self._body = RequestBody(self.rfile, self.headers.get("Transfer-Encoding", ""),
                                     self.headers.get("Content-Length"))
            self._query = urllib.parse.parse_qs(url.query, keep_blank_values=True,
                                                errors="surrogateescape")
            self._route(url.path)(self)
        except Exception as exc:
            self._fail(exc)
        if self._body is None or not self._body.finished:
            self.close_connection = True  # unread body bytes would be taken as the next request

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _dispatch  # noqa: N815

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer a request that http.server itself rejected, in JSON, and close the connection."""
        self._body = None
        self._send_json(code, {"error": message or HTTPStatus(code).phrase})

    def _check_secret(self) -> None:
        given = self.headers.get(SECRET_HEADER)
        if given is None:
            raise AgentError(401, f"missing {SECRET_HEADER} header; send the agent's secret",
                             {"WWW-Authenticate": "Buildlet-Secret"})
        if not hmac.compare_digest(given.encode("latin-1", "replace"), self.server.secret):
            raise AgentError(401, f"wrong {SECRET_HEADER}; send the secret the agent started with",
                             {"WWW-Authenticate": "Buildlet-Secret"})

    def _route(self, path: str) -> Callable[[BuildletHandler], None]:
        methods = self.routes.get(path)
        if methods is None:
            raise AgentError(404, f"no endpoint {path!r}; try one of {', '.join(self.routes)}")
        handler = methods.get(self.command)
        if handler is None:
            allowed = ", ".join(methods)
            raise AgentError(405, f"{path} takes {allowed}, not {self.command}", {"Allow": allowed})
        return handler

    def _fail(self, exc: Exception) -> None:
        if self._started or isinstance(exc, ConnectionError):
            self.close_connection = True  # cut the body short so the client sees the failure
            if not isinstance(exc, ConnectionError):
                self.log_error("%s", f"{self.command} {self.path} failed mid-response: {exc!r}")
            return
        if isinstance(exc, AgentError):
            error = exc
        elif isinstance(exc, OSError):
            where = f": {exc.filename}" if exc.filename else ""
            status = OS_ERROR_STATUS.get(exc.errno or 0, 500)
            error = AgentError(status, f"{exc.strerror or exc}{where}")
        else:
            self.log_error("%s", traceback.format_exc())
            error = AgentError(500, f"internal error in the buildlet agent: {exc!r}; see its log")
        self._send_json(error.status, {"error": error.message}, error.headers)

    def _end_headers(self) -> None:
        notice = self.server.preemption_notice()
        if notice is not None:
            self.send_header(PREEMPTED_HEADER, str(notice["reason"]))
        if self._body is None or not self._body.finished:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self._started = True

    def _send_json(self, status: int, payload: object,
                   headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self._end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _start_stream(self, content_type: str, trailer: str | None = None,
                      headers: dict[str, str] | None = None) -> ChunkedStream:
        if self.request_version != "HTTP/1.1":
            raise AgentError(505, "this endpoint streams with chunked encoding; use HTTP/1.1")
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        if trailer:
            self.send_header("Trailer", trailer)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self._end_headers()
        return ChunkedStream(self.wfile)

    def _read_form(self) -> dict[str, list[str]]:
        kind = self.headers.get("Content-Type", "application/x-www-form-urlencoded")
        if kind.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            raise AgentError(415, f"send the form as application/x-www-form-urlencoded, not {kind}")
        text = self.body.read_limited(MAX_FORM_BYTES).decode("utf-8", "surrogateescape")
        return urllib.parse.parse_qs(text, keep_blank_values=True, errors="surrogateescape")

    def _existing_dir(self) -> str:
        rel = single(self._query, "dir", ".")
        top = self.server.workdir.resolve(rel)
        if not stat.S_ISDIR(existing(top, rel).st_mode):
            raise AgentError(400, f"{rel!r} is not a directory; use /read for a file")
        return top

    def handle_status(self) -> None:
        """GET /status: agent and host facts."""
        self._send_json(200, {
            "Version": PROTOCOL_VERSION,
            "agent_version": VERSION,
            "workdir": self.server.workdir.root,
            "os": platform.system().lower(),
            "arch": platform.machine(),
            "python": platform.python_version(),
            "hostname": socket.gethostname(),
            "uptime": round(time.monotonic() - self.server.started, 3),
            "running": len(self.server.processes),
            "preempted": self.server.preemption_notice(),
            "prestarted_worker": (None if self.server.prestarted is None
                                  else self.server.prestarted.state()),
        })

    def handle_exec(self) -> None:
        """POST /exec: run a command, streaming its output, then its exit status."""
        request = ExecRequest.from_form(self._read_form(), self.server.workdir)
        run, token = self.server.execs.start(request, self.server.processes)
        self._follow_exec(run, token, 0)

    def handle_exec_attach(self) -> None:
        """GET /exec/attach?id=&offset=: the output of a running or ended exec from a byte offset,
        then its status, in the same encoding as /exec."""
        run = self.server.execs.get(single(self._query, "id"))
        text = single(self._query, "offset", "0")
        if not text.isdigit():
            raise AgentError(400, f"offset {text!r} is not a byte count such as 0 or 4096")
        token, start = run.attach(int(text))
        self._follow_exec(run, token, start)

    def handle_exec_kill(self) -> None:
        """POST /exec/kill?id=: kill a running exec's process group."""
        run = self.server.execs.get(single(self._query, "id"))
        self._send_json(200, {"id": run.id, "killed": run.kill("killed by /exec/kill")})

    def _follow_exec(self, run: ExecRun, token: object, start: int) -> None:
        framed = self.headers.get(FRAMING_HEADER, "").strip() == "1"
        headers = {EXEC_ID_HEADER: run.id, EXEC_OFFSET_HEADER: str(start)}
        if framed:
            stream = self._start_stream(FRAMES_TYPE, headers=headers)
        else:
            stream = self._start_stream("text/plain", trailer="Process-State", headers=headers)

        def emit(data: bytes) -> object:
            return stream.write(frame(b"o", data) if framed else data)

        result = run.follow(token, emit, self.connection)
        if result is None:
            self.close_connection = True
        elif framed:
            stream.write(frame(b"x", result.to_json()))
            stream.finish()
        else:
            stream.finish({"Process-State": result.state})

    def handle_workdir(self) -> None:
        """GET /workdir: the work directory's absolute path, as plain text (Go's WorkDir)."""
        body = self.server.workdir.root.encode("utf-8", "surrogateescape")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self._end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_writetgz_url(self) -> None:
        """POST /writetgz (form ``url``): refused, as it would make the agent fetch any URL."""
        self._read_form()
        raise AgentError(400, "POST /writetgz asks the buildlet to download url= itself, which "
                              "this farm refuses (it could reach any address the buildlet can); "
                              "download the .tar.gz and PUT it to /writetgz?dir=DIR instead")

    def handle_writetgz(self) -> None:
        """PUT /writetgz?dir=: unpack the tar.gz body into dir, all or nothing."""
        rel = single(self._query, "dir", ".")
        target = self.server.workdir.resolve(rel)
        if os.path.lexists(target) and not os.path.isdir(target):
            raise AgentError(409, f"dir {rel!r} exists and is not a directory")
        count = unpack_into(self.body, target, self.server.workdir.root)
        self._send_json(200, {"dir": rel, "entries": count})

    def handle_tgz(self) -> None:
        """GET /tgz?dir=: stream a tar.gz of dir."""
        top = self._existing_dir()
        stream = self._start_stream("application/gzip")
        write_tgz(top, stream)
        stream.finish()

    def handle_ls(self) -> None:
        """GET /ls?dir=&recursive=&digest=&skip=: list a directory in Go's lines, or JSON.

        JSON (with sha256 digests) for ``format=json`` or ``Accept: application/json``.
        """
        top = self._existing_dir()
        digest = flag(self._query, "digest")
        walk = walk_tree(top, flag(self._query, "recursive"),
                         skip=frozenset(self._query.get("skip", [])))
        wanted = single(self._query, "format", "")
        if wanted not in ("", "json", "lines"):
            raise AgentError(400, f"format {wanted!r} is not json or lines (Go's, the default)")
        if wanted == "json" or (not wanted and "application/json" in self.headers.get(
                "Accept", "")):
            entries = []
            for path, name in walk:
                with contextlib.suppress(FileNotFoundError):  # removed while we walked
                    entries.append(describe_entry(path, name, digest))
            self._send_json(200, entries)
            return
        stream = self._start_stream("text/plain; charset=utf-8")
        with gathered_chunks(stream) as chunks:
            for path, name in walk:
                with contextlib.suppress(FileNotFoundError):  # removed while we walked
                    chunks.write(go_ls_line(path, name, digest))
        stream.finish()

    def handle_removeall(self) -> None:
        """POST /removeall: remove each form field path (``.`` empties the workdir)."""
        rels = self._read_form().get("path", [])
        if not rels:
            raise AgentError(400, "give at least one 'path' form field to remove")
        paths = [self.server.workdir.resolve(rel, follow_last=False) for rel in rels]
        removed = [rel for rel, path in zip(rels, paths) if remove_path_or_entries(
            path, path == self.server.workdir.root)]
        self._send_json(200, {"removed": removed})

    def handle_write(self) -> None:
        """PUT /write?path=&mode=: store the body as a file."""
        rel = single(self._query, "path")
        mode = parse_mode(single(self._query, "mode", "420"))
        dest = self.server.workdir.resolve(rel, follow_last=False)
        if os.path.isdir(dest) and not os.path.islink(dest):
            raise AgentError(409, f"path {rel!r} is a directory")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        size = write_atomically(self.body, dest, mode)
        self._send_json(200, {"path": rel, "size": size})

    def handle_read(self) -> None:
        """GET /read?path=: stream a file."""
        rel = single(self._query, "path")
        path = self.server.workdir.resolve(rel)
        if not stat.S_ISREG(existing(path, rel).st_mode):
            raise AgentError(400, f"{rel!r} is not a regular file; use /tgz or /ls for a directory")
        with open(path, "rb") as source:
            left = os.fstat(source.fileno()).st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(left))
            self._end_headers()
            while left:
                block = source.read(min(left, CHUNK))
                if not block:
                    raise OSError(f"{rel!r} shrank while it was being sent")
                self.wfile.write(block)
                left -= len(block)

    def handle_deadline(self) -> None:
        """GET /deadline: seconds left before the agent halts itself; POST: set them (form
        ``seconds``)."""
        if self.command == "POST":
            text = single(self._read_form(), "seconds")
            try:
                seconds = float(text)
            except ValueError:
                seconds = -1.0
            if not 0 < seconds <= MAX_DEADLINE:
                raise AgentError(400, f"seconds {text!r} must be a number of seconds > 0 and "
                                      f"<= {MAX_DEADLINE:g}")
            self.server.deadline.set(seconds)
        self._send_json(200, {"seconds": self.server.deadline.remaining()})

    def handle_halt(self) -> None:
        """POST /halt: answer, then kill running commands and exit."""
        self._send_json(200, {"halted": True})
        self.close_connection = True
        self.server.stop_soon()

    routes: ClassVar[dict[str, dict[str, Callable[[BuildletHandler], None]]]] = {
        "/status": {"GET": handle_status},
        "/exec": {"POST": handle_exec},
        "/exec/attach": {"GET": handle_exec_attach},
        "/exec/kill": {"POST": handle_exec_kill},
        "/workdir": {"GET": handle_workdir},
        "/writetgz": {"PUT": handle_writetgz, "POST": handle_writetgz_url},
        "/tgz": {"GET": handle_tgz},
        "/ls": {"GET": handle_ls},
        "/removeall": {"POST": handle_removeall},
        "/write": {"PUT": handle_write},
        "/read": {"GET": handle_read},
        "/halt": {"POST": handle_halt},
        "/deadline": {"GET": handle_deadline, "POST": handle_deadline},
    }

