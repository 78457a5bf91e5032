"""Go's buildlet client, byte for byte, through the coordinator's proxy to a real agent.

The requests here are what golang.org/x/build's ``buildlet`` package sends through Go's
net/http (read from its ``buildletclient.go`` and ``remote.go``): HTTP/1.1 with ``User-Agent:
Go-http-client/1.1`` and ``Accept-Encoding: gzip``, Basic auth as the coordinator user, the
``X-Buildlet-Proxy`` header, forms encoded as ``url.Values.Encode`` does (keys sorted, spaces as
``+``), ``Put``'s mode in decimal, and a chunked body for a reader of unknown length. Answers
are read from a raw socket and judged as x/build reads them: the ``Process-State`` trailer,
``/ls`` lines split on tabs, ``Status`` decoded by encoding/json (keys matched without case).
The blocking client runs in a thread, as the coordinator shares the test's reactor.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import socket
import stat
import tarfile
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import threads
from twisted.web import resource, server

from buildbot_farm.compat import twisted_web
from buildbot_farm.leases import keys
from tests.harness.twisted_reactor import reactor
from tests.leases.conftest import SECRET, RunningCoordinator, StartCoordinator

FORM = "application/x-www-form-urlencoded"


@dataclass
class Answer:
    """One response as it came over the wire: head, de-chunked body and trailers."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: dict[str, str] = field(default_factory=dict)
    raw_chunked: bool = False

    def header(self, name: str) -> str | None:
        """The value of the header ``name`` (None if absent; names without case)."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None


class GoClient:
    """Sends requests as x/build's buildlet client does, over one kept-alive connection."""

    def __init__(self, url: str, user: str, key: str, buildlet: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "", parsed.port or 80
        self.auth = base64.b64encode(f"{user}:{key}".encode()).decode()
        self.buildlet = buildlet
        self.sock = socket.create_connection((self.host, self.port), timeout=30)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        """Close the connection."""
        self.reader.close()
        self.sock.close()

    def send(self, method: str, target: str, body: bytes | Iterable[bytes] = b"",
             content_type: str | None = None) -> Answer:
        """Send one request (chunked if ``body`` is an iterable of pieces); read the answer."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 "User-Agent: Go-http-client/1.1"]
        if not isinstance(body, bytes):
            lines.append("Transfer-Encoding: chunked")
        elif body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        lines.append(f"Authorization: Basic {self.auth}")
        if content_type:
            lines.append(f"Content-Type: {content_type}")
        lines += [f"X-Buildlet-Proxy: {self.buildlet}", "Accept-Encoding: gzip"]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        if isinstance(body, bytes):
            self.sock.sendall(head + body)
        else:
            self.sock.sendall(head)
            for piece in body:
                self.sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.sock.sendall(b"0\r\n\r\n")
        return self.read_answer(method)

    def form(self, path: str, fields: dict[str, list[str]]) -> Answer:
        """POST a form encoded as Go's url.Values.Encode does: keys sorted, empty lists left out."""
        pairs = [(k, v) for k in sorted(fields) for v in fields[k]]
        return self.send("POST", path, urllib.parse.urlencode(pairs).encode(), FORM)

    def read_answer(self, method: str) -> Answer:
        """Read one response: status, headers, then the body by its length or its chunks."""
        status_line = self.reader.readline().decode()
        assert status_line.startswith("HTTP/1.1 "), status_line
        headers = []
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers.append((name, value.strip()))
        answer = Answer(int(status_line.split()[1]), headers, b"")
        if method == "HEAD":
            return answer
        if (answer.header("Transfer-Encoding") or "").lower() == "chunked":
            answer.raw_chunked = True
            answer.body, answer.trailers = read_chunked(self.reader)
        else:
            answer.body = self.reader.read(int(answer.header("Content-Length") or 0))
        return answer


def read_chunked(reader: Any) -> tuple[bytes, dict[str, str]]:
    """Read a chunked body to its end; return its data and its trailer fields."""
    data = b""
    while True:
        size_line = reader.readline()
        assert size_line.endswith(b"\r\n"), f"the chunked body broke off: {size_line!r}"
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        data += reader.read(size)
        assert reader.read(2) == b"\r\n"
    trailers = {}
    while (line := reader.readline()) != b"\r\n":
        assert line.endswith(b"\r\n"), f"the trailers broke off: {line!r}"
        name, _, value = line.decode().partition(":")
        trailers[name] = value.strip()
    return data, trailers


def go_status_version(body: bytes) -> int:
    """Decode ``body`` into Go's ``Status{Version int}`` as encoding/json would, or fail.

    encoding/json matches object keys to the field without regard to case; a matching key
    whose value is not a JSON integer is an error.
    """
    decoded = json.loads(body)
    matching = [value for key, value in decoded.items() if key.lower() == "version"]
    assert matching, f"no Version in {decoded}"
    for value in matching:
        assert type(value) is int, f"Version is {value!r}, not an integer"
    return int(matching[-1])


@dataclass
class DirEntry:
    """One /ls line, taken apart as x/build's ``DirEntry`` methods do."""

    line: str

    def name(self) -> str:
        """The entry's path (a directory's ends in /): the second tab-separated field, or empty."""
        f = self.line.split("\t")
        return f[1] if len(f) >= 2 else ""

    def perm(self) -> str:
        """The mode string before the first tab, or empty when the line has no tab."""
        return self.line.split("\t", 1)[0] if "\t" in self.line else ""

    def is_dir(self) -> bool:
        """Whether the line (its mode string) starts with ``d``."""
        return self.line[:1] == "d"

    def digest(self) -> str:
        """The fifth tab-separated field (a file's SHA-1 when /ls was asked for digests), or
        empty."""
        f = self.line.split("\t")
        return f[4] if len(f) >= 5 else ""


def list_dir(answer: Answer) -> list[DirEntry]:
    """ListDir's reading of an /ls answer: one entry per line, each trimmed of spaces."""
    return [DirEntry(line.strip()) for line in answer.body.decode().splitlines()]


async def lease(running: RunningCoordinator, user: str = "user-alice") -> tuple[str, str]:
    """Lease a buildlet for ``user``; its name and its key."""
    name = (await running.client(user).create("local"))["Name"]
    return name, keys.user_key(SECRET, user)


def tgz(files: dict[str, bytes]) -> bytes:
    """A tar.gz of regular files (mode 0644)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest_twisted.ensureDeferred
async def test_status_decodes_as_gos_status_for_both_user_forms(
    start_coordinator: StartCoordinator,
) -> None:
    """GET /status decodes into Go's Status (integer Version) as user-NAME and buildlet-NAME."""
    running = await start_coordinator()
    name, key = await lease(running)

    def talk() -> list[Answer]:
        answers = []
        for user in ("user-alice", "buildlet-alice"):
            go = GoClient(running.url, user, key, name)
            try:
                answers.append(go.send("GET", "/status"))
            finally:
                go.close()
        return answers

    for answer in await threads.deferToThread(talk):
        assert answer.status == 200, answer.body
        assert go_status_version(answer.body) >= 23  # Go's coordinator refuses older buildlets
        assert answer.header("Content-Encoding") is None


@pytest_twisted.ensureDeferred
async def test_exec_relays_the_process_state_trailer(start_coordinator: StartCoordinator) -> None:
    """A plain /exec streams its output and ends with the Process-State trailer it declared."""
    running = await start_coordinator()
    name, key = await lease(running)

    def talk() -> list[Answer]:
        go = GoClient(running.url, "user-alice", key, name)
        try:
            return [go.form("/exec", {
                "cmd": ["sh"], "cmdArg": ["-c", script], "debug": ["false"], "dir": [""],
                "env": ["GREETING=hi there"], "mode": ["sys"],
            }) for script in ('echo "$GREETING"; echo err >&2', "echo out; exit 3",
                              "kill -TERM $$")]
        finally:
            go.close()

    ok, failed, killed = await threads.deferToThread(talk)
    for answer in (ok, failed, killed):
        assert answer.status == 200
        assert answer.raw_chunked
        assert answer.header("Trailer") == "Process-State"
        assert answer.header("Content-Encoding") is None
    assert (ok.body, ok.trailers) == (b"hi there\nerr\n", {"Process-State": "ok"})
    assert (failed.body, failed.trailers) == (b"out\n", {"Process-State": "exit status 3"})
    assert killed.trailers == {"Process-State": "signal: SIGTERM"}


@pytest_twisted.ensureDeferred
async def test_exec_path_field_sets_path_as_gos_server_does(
    start_coordinator: StartCoordinator,
) -> None:
    """The exec form's path elements expand $WORKDIR, $PATH and $EMPTY into the command's PATH."""
    running = await start_coordinator()
    name, key = await lease(running)

    def talk() -> tuple[Answer, Answer]:
        go = GoClient(running.url, "user-alice", key, name)
        try:
            return go.send("GET", "/workdir"), go.form("/exec", {
                "cmd": ["/bin/sh"], "cmdArg": ["-c", "echo $PATH"], "debug": ["false"],
                "dir": [""], "mode": ["sys"], "path": ["$WORKDIR/bin", "$EMPTY", "$PATH"],
            })
        finally:
            go.close()

    workdir, answer = await threads.deferToThread(talk)
    first, _, rest = answer.body.decode().strip().partition(":")
    assert first == workdir.body.decode() + "/bin"
    assert rest
    assert "$" not in rest
    assert answer.trailers == {"Process-State": "ok"}


@pytest_twisted.ensureDeferred
async def test_put_sends_the_mode_in_decimal_and_workdir_is_plain_text(
    start_coordinator: StartCoordinator,
) -> None:
    """Put's mode=493 makes a 0755 file and 420 a 0644 one (also chunked); /workdir is its path."""
    running = await start_coordinator()
    name, key = await lease(running)

    def talk() -> list[Answer]:
        go = GoClient(running.url, "user-alice", key, name)
        try:
            return [
                go.send("PUT", "/write?mode=493&path=bin%2Frun.sh", b"#!/bin/sh\necho ran in $PWD"),
                go.send("PUT", "/write?mode=420&path=notes.txt", [b"streamed ", b"in chunks"]),
                go.send("PUT", "/write?mode=0644&path=bad.txt", b"x"),
                go.send("GET", "/workdir"),
                go.form("/exec", {"cmd": ["bin/run.sh"], "debug": ["false"], "dir": [""],
                                  "mode": [""]}),
            ]
        finally:
            go.close()

    script, notes, bad, workdir_answer, ran = await threads.deferToThread(talk)
    assert (script.status, notes.status, bad.status) == (200, 200, 400)
    workdir = Path(workdir_answer.body.decode())
    assert workdir_answer.status == 200
    assert workdir.is_absolute()
    assert workdir == (running.provider.root / name / "work").resolve()
    assert workdir_answer.header("Content-Type") == "text/plain; charset=utf-8"
    assert stat.S_IMODE((workdir / "bin" / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((workdir / "notes.txt").stat().st_mode) == 0o644
    assert (workdir / "notes.txt").read_bytes() == b"streamed in chunks"
    assert not (workdir / "bad.txt").exists()
    # Go's buildlet runs a command given by its path in the workdir in its own directory
    assert (ran.body, ran.trailers) == (f"ran in {workdir}/bin\n".encode(), {"Process-State": "ok"})


@pytest_twisted.ensureDeferred
async def test_ls_lines_parse_as_gos_list_dir_parses_them(
    start_coordinator: StartCoordinator,
) -> None:
    """/ls answers Go's lines: mode, name (dirs end in /), size, RFC 3339 time, SHA-1; and skip."""
    running = await start_coordinator()
    name, key = await lease(running)
    workdir = running.provider.root / name / "work"
    (workdir / "src" / "pkg").mkdir(parents=True)
    (workdir / "src" / "pkg" / "a.go").write_bytes(b"package a\n")
    (workdir / "src" / "main.go").write_bytes(b"package main\n")
    (workdir / "src" / "main.go").chmod(0o640)
    (workdir / "skipped" / "deep").mkdir(parents=True)
    (workdir / "link").symlink_to("src")
    os.utime(workdir / "src" / "main.go", (1_700_000_000.7, 1_700_000_000.7))

    def talk() -> tuple[Answer, Answer, Answer]:
        go = GoClient(running.url, "user-alice", key, name)
        try:
            return (
                go.send("GET", "/ls?digest=false&dir=&recursive=false"),
                go.send("GET", "/ls?digest=true&dir=.&recursive=true&skip=skipped"),
                go.send("GET", "/ls?digest=false&dir=src&recursive=false"),
            )
        finally:
            go.close()

    flat, deep, sub = await threads.deferToThread(talk)
    assert flat.status == deep.status == sub.status == 200
    assert [(e.perm(), e.name(), e.is_dir()) for e in list_dir(flat)] == [
        ("Lrwxrwxrwx", "link", False), ("drwxr-xr-x", "skipped/", True),
        ("drwxr-xr-x", "src/", True),
    ]
    entries = {e.name(): e for e in list_dir(deep)}
    assert sorted(entries) == ["link", "src/", "src/main.go", "src/pkg/", "src/pkg/a.go"]
    main = entries["src/main.go"].line.split("\t")
    assert main[0] == "-rw-r-----"
    assert main[2] == str(len(b"package main\n"))
    assert datetime.strptime(main[3], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc).timestamp() == 1_700_000_000
    assert entries["src/main.go"].digest() == hashlib.sha1(b"package main\n").hexdigest()
    assert entries["src/pkg/"].line.split("\t") == ["drwxr-xr-x", "src/pkg/"]
    assert [e.name() for e in list_dir(sub)] == ["main.go", "pkg/"]
    assert all(len(e.line.split("\t")) == 4 for e in list_dir(sub) if not e.is_dir())


@pytest_twisted.ensureDeferred
async def test_tar_remove_and_halt_as_go_sends_them(start_coordinator: StartCoordinator) -> None:
    """PutTar/GetTar round-trip, RemoveAll works (also '.'), URL PutTar is refused, halt ends it."""
    running = await start_coordinator()
    name, key = await lease(running)
    files = {"a.txt": b"alpha", "sub/b.txt": b"beta"}

    def talk() -> dict[str, Answer]:
        go = GoClient(running.url, "user-alice", key, name)
        try:
            answers = {
                "puttar": go.send("PUT", "/writetgz?dir=tree", tgz(files)),
                "url": go.form("/writetgz?dir=other", {"url": ["http://127.0.0.1:9/x.tgz"]}),
                "gettar": go.send("GET", "/tgz?dir=tree"),
                "remove": go.form("/removeall", {"path": ["tree/a.txt"]}),
                "after": go.send("GET", "/ls?digest=false&dir=tree&recursive=true"),
                "clean": go.form("/removeall", {"path": ["."]}),
                "empty": go.send("GET", "/ls?digest=false&dir=&recursive=true"),
                "halt": go.send("POST", "/halt"),
            }
        finally:
            go.close()
        again = GoClient(running.url, "user-alice", key, name)
        try:
            answers["gone"] = again.send("GET", "/status")
        finally:
            again.close()
        return answers

    answers = await threads.deferToThread(talk)
    assert answers["puttar"].status == 200
    assert answers["url"].status == 400
    assert "PUT it to /writetgz" in json.loads(answers["url"].body)["error"]
    assert not (running.provider.root / name / "work" / "other").exists()
    assert answers["gettar"].status == 200
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(answers["gettar"].body))) as tar:
        got = {m.name: (tar.extractfile(m) or io.BytesIO()).read() for m in tar if m.isfile()}
    assert got == files
    assert answers["remove"].status == 200
    assert [e.name() for e in list_dir(answers["after"])] == ["sub/", "sub/b.txt"]
    assert (answers["clean"].status, answers["empty"].body) == (200, b"")
    assert answers["halt"].status == 200
    assert answers["gone"].status == 502
    assert await running.coordinator.table.all() == []


@pytest_twisted.ensureDeferred
async def test_a_buildlet_not_yours_answers_byte_for_byte_as_a_missing_one(
    start_coordinator: StartCoordinator,
) -> None:
    """Another user's buildlet and a missing one get the same status, headers and body shape."""
    running = await start_coordinator()
    name, _ = await lease(running)
    bob_key = keys.user_key(SECRET, "user-bob")

    def ask(target: str) -> Answer:
        go = GoClient(running.url, "buildlet-bob", bob_key, target)
        try:
            return go.send("GET", "/status")
        finally:
            go.close()

    foreign = await threads.deferToThread(ask, name)
    missing = await threads.deferToThread(ask, name + "9")
    assert foreign.status == missing.status == 502
    assert sorted(k for k, _ in foreign.headers) == sorted(k for k, _ in missing.headers)
    assert foreign.body.replace(name.encode(), b"NAME") == missing.body.replace(
        (name + "9").encode(), b"NAME")


@pytest_twisted.ensureDeferred
async def test_an_answer_that_breaks_off_reaches_the_client_broken(
    start_coordinator: StartCoordinator,
) -> None:
    """When the agent dies mid-exec the client's chunked body breaks off, with no last chunk."""
    # No sandbox: there the agent is its PID namespace's init, which `kill -9` from inside
    # cannot end.
    running = await start_coordinator(sandbox="none")
    name, key = await lease(running)

    def talk() -> bytes:
        go = GoClient(running.url, "user-alice", key, name)
        try:
            body = urllib.parse.urlencode([
                ("cmd", "sh"), ("cmdArg", "-c"),
                ("cmdArg", "echo partial; sleep 0.5; kill -9 $PPID"), ("mode", "sys")]).encode()
            go.sock.sendall(
                f"POST /exec HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {go.auth}\r\n"
                f"X-Buildlet-Proxy: {name}\r\nContent-Type: {FORM}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            received = b""
            while data := go.sock.recv(65536):
                received += data
            return received
        except ConnectionResetError:
            return received
        finally:
            go.close()

    received = await threads.deferToThread(talk)
    assert b"partial\n" in received
    assert not received.endswith(b"0\r\n\r\n"), received[-40:]


@pytest_twisted.ensureDeferred
async def test_an_http10_client_gets_the_output_de_chunked(
    start_coordinator: StartCoordinator,
) -> None:
    """A client that cannot take chunks gets the exec output plain, without a Trailer header."""
    running = await start_coordinator()
    name, key = await lease(running)

    def talk() -> bytes:
        go = GoClient(running.url, "user-alice", key, name)
        try:
            body = urllib.parse.urlencode([("cmd", "printf"), ("cmdArg", "one\\ntwo\\n"),
                                           ("mode", "sys")]).encode()
            go.sock.sendall(
                f"POST /exec HTTP/1.0\r\nAuthorization: Basic {go.auth}\r\n"
                f"X-Buildlet-Proxy: {name}\r\nContent-Type: {FORM}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            return go.reader.read()
        finally:
            go.close()

    received = await threads.deferToThread(talk)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ")
    assert b"chunked" not in head.lower()
    assert b"trailer" not in head.lower()
    assert body == b"one\ntwo\n"


class _RawChunks(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes | int:
        request.setHeader(b"trailer", b"Process-State")
        write = twisted_web.raw_body_writer(request)
        if write is None:
            return b"de-chunked"
        write(b"5\r\nhello\r\n0\r\nProcess-State: ok\r\n\r\n")
        twisted_web.finish_raw_body(request)
        return server.NOT_DONE_YET


@pytest_twisted.ensureDeferred
async def test_tripwire_twisted_web_lets_the_proxy_write_a_raw_chunked_body() -> None:
    """twisted.web still sends a raw chunked body with trailers intact and keeps the connection."""
    port = reactor.listenTCP(0, server.Site(_RawChunks()), interface="127.0.0.1")

    def talk() -> tuple[bytes, bytes]:
        sock = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=10)
        reader = sock.makefile("rb")
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
            bodies = []
            for _ in range(2):
                head = b""
                while (line := reader.readline()) != b"\r\n":
                    head += line
                assert b"Transfer-Encoding: chunked" in head, head
                body, trailers = read_chunked(reader)
                bodies.append(body + repr(trailers).encode())
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            old = reader.read()
            return bodies[0] + b"|" + bodies[1], old
        finally:
            reader.close()
            sock.close()

    try:
        both, old = await threads.deferToThread(talk)
    finally:
        await port.stopListening()
    assert both == b"hello{'Process-State': 'ok'}|hello{'Process-State': 'ok'}"
    assert old.endswith(b"\r\n\r\nde-chunked")
