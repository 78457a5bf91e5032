"""The buildlet agent, run as a real subprocess and spoken to over real HTTP.

Set ``BUILDLET_AGENT_PYTHON`` to run the agent under another interpreter (e.g. Python 3.9).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import tarfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.private_dirs import remote_archive

SECRET = "s3cret for tests"
AGENT_PYTHON = os.environ.get("BUILDLET_AGENT_PYTHON", sys.executable)
# The agent as the providers run it: ``python3 farm-remote.pyz agent ...``.
AGENT = [str(remote_archive()), "agent"]
FORM = "application/x-www-form-urlencoded"


class RunningAgent:
    """A buildlet agent subprocess, its work directory and a small HTTP client for it."""

    def __init__(self, proc: subprocess.Popen[str], url: str, workdir: Path) -> None:
        self.proc = proc
        self.url = url
        self.workdir = workdir
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "", parsed.port or 0

    def connect(self) -> http.client.HTTPConnection:
        """Open a connection to the agent."""
        return http.client.HTTPConnection(self.host, self.port, timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None,
                secret: str | None = SECRET) -> tuple[int, dict[str, str], bytes]:
        """Send one request and return status, headers and the whole body."""
        all_headers = dict(headers or {})
        if secret is not None:
            all_headers["X-Buildlet-Secret"] = secret
        conn = self.connect()
        try:
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """Send one request and decode its JSON answer."""
        status, _, data = self.request(method, path, body, headers)
        return status, json.loads(data)

    def post_form(self, path: str, fields: list[tuple[str, str]],
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """POST a url-encoded form."""
        body = urllib.parse.urlencode(fields).encode()
        return self.request("POST", path, body, {"Content-Type": FORM, **(headers or {})})

    def start_exec(self, fields: list[tuple[str, str]]) -> tuple[http.client.HTTPConnection,
                                                                  FrameReader]:
        """Start a framed /exec and return the open connection and a reader for its frames."""
        conn = self.connect()
        conn.request("POST", "/exec", body=urllib.parse.urlencode(fields).encode(), headers={
            "X-Buildlet-Secret": SECRET, "Content-Type": FORM, "X-Buildlet-Framing": "1"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        assert response.getheader("Content-Type") == "application/x-buildlet-frames"
        return conn, FrameReader(response)

    def run(self, *argv: str, **fields: str) -> tuple[bytes, dict[str, object]]:
        """Run a command through framed /exec; return its output and final status."""
        conn, frames = self.start_exec([("cmd", argv[0]), *(("cmdArg", a) for a in argv[1:]),
                                        *fields.items()])
        try:
            return frames.rest()
        finally:
            conn.close()

    def stop(self) -> int:
        """Stop the agent with SIGTERM if it still runs; return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


class FrameReader:
    """Reads application/x-buildlet-frames frames as they arrive."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self._response = response
        self._buffer = b""

    def header(self, name: str) -> str | None:
        """A header of the response the frames come in."""
        return self._response.getheader(name)

    def next(self) -> tuple[bytes, bytes]:
        """Return the next frame's type and payload."""
        header = self._take(5)
        return header[:1], self._take(struct.unpack(">I", header[1:])[0])

    def rest(self) -> tuple[bytes, dict[str, object]]:
        """Read up to the final frame; return all output and the decoded status."""
        output = b""
        while True:
            kind, payload = self.next()
            if kind == b"x":
                assert self._response.read() == b""
                return output, json.loads(payload)
            assert kind == b"o"
            output += payload

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            data = self._response.read1(65536)
            if not data:
                raise EOFError("the frame stream ended early")
            self._buffer += data
        taken, self._buffer = self._buffer[:size], self._buffer[size:]
        return taken


def start_agent(tmp_path: Path, *extra: str, secret_args: list[str] | None = None,
                env: dict[str, str] | None = None) -> RunningAgent:
    """Start the agent on a free port and wait for its BUILDLET-READY line."""
    workdir = tmp_path / "work"
    secret_file = tmp_path / "secret"
    secret_file.write_text(f"  {SECRET}\n")
    with open(tmp_path / "agent.log", "ab") as log:
        proc = subprocess.Popen(
            [AGENT_PYTHON, *AGENT, "--listen", "127.0.0.1:0", "--workdir", str(workdir),
             *(secret_args or ["--secret-file", str(secret_file)]), *extra],
            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("BUILDLET-READY http://127.0.0.1:"), (line, proc.wait(5))
    return RunningAgent(proc, line.split()[1], workdir)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[RunningAgent]:
    """An agent serving tmp_path/work, stopped (and checked to exit cleanly) afterwards."""
    running = start_agent(tmp_path)
    yield running
    assert running.stop() == 0


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the workdir that nothing may ever write into."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_text("do not touch\n")
    return path


def snapshot(root: Path) -> dict[str, object]:
    """Everything under root: names, kinds, link targets and file contents."""
    seen: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                seen[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[rel] = "dir"
            else:
                seen[rel] = path.read_bytes()
    return seen


def process_alive(pid: int) -> bool:
    """Tell whether pid is a live process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat_file = Path(f"/proc/{pid}/stat")
    return not (stat_file.exists() and stat_file.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def wait_until_gone(pid: int, timeout: float = 5.0) -> bool:
    """Wait for pid to die; return whether it did in time."""
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
           linkname: str = "", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    """Describe one tar member for make_tgz."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.size = kind, linkname, mode, len(data)
    info.mtime = 1_700_000_000
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info, data


def make_tgz(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    """Build a tar.gz holding exactly the given members, however unsafe."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def raw_exec(agent: RunningAgent, fields: list[tuple[str, str]]) -> tuple[bytes, bytes, bytes]:
    """POST /exec on a bare socket; return the response head, the de-chunked body and trailers."""
    body = urllib.parse.urlencode(fields).encode()
    head = (f"POST /exec HTTP/1.1\r\nHost: agent\r\nContent-Type: {FORM}\r\n"
            f"Content-Length: {len(body)}\r\n")
    return raw_request(agent, head, body)


def raw_request(agent: RunningAgent, head: str, body: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """Send head (request line and headers) and body on a bare socket with the secret; return
    the response head, the de-chunked body and the trailers."""
    head_bytes, chunks, trailers = raw_chunks(agent, head, body)
    return head_bytes, b"".join(chunks), trailers


def raw_chunks(
    agent: RunningAgent, head: str, body: bytes = b""
) -> tuple[bytes, list[bytes], bytes]:
    """:func:`raw_request`, with the body's chunks as the agent sent them."""
    request = f"{head}X-Buildlet-Secret: {SECRET}\r\nConnection: close\r\n\r\n"
    with socket.create_connection((agent.host, agent.port), timeout=30) as sock:
        sock.sendall(request.encode() + body)
        received = b"".join(iter(lambda: sock.recv(65536), b""))
    head_bytes, _, rest = received.partition(b"\r\n\r\n")
    chunks: list[bytes] = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return head_bytes, chunks, rest
        chunks.append(rest[:size])
        assert rest[size:size + 2] == b"\r\n"
        rest = rest[size + 2:]


def test_status_reports_host_facts(agent: RunningAgent) -> None:
    """GET /status answers with Go's integer Version, the agent's version, platform and load."""
    status, facts = agent.json("GET", "/status")
    assert status == 200
    assert isinstance(facts, dict)
    assert facts["workdir"] == os.path.realpath(agent.workdir)
    assert facts["os"] == sys.platform.rstrip("0123456789")
    assert facts["running"] == 0
    assert isinstance(facts["Version"], int)
    assert {"agent_version", "arch", "python", "hostname", "uptime"} <= facts.keys()


@pytest.mark.parametrize("secret", [None, "wrong", ""])
def test_requests_without_the_secret_are_refused(agent: RunningAgent, secret: str | None) -> None:
    """A missing, wrong or empty X-Buildlet-Secret gets 401 with a JSON error."""
    status, headers, body = agent.request("GET", "/status", secret=secret)
    assert status == 401
    assert headers["Content-Type"] == "application/json"
    assert "X-Buildlet-Secret" in json.loads(body)["error"]


def test_unknown_paths_and_wrong_methods_are_json_errors(agent: RunningAgent) -> None:
    """An unknown path is 404 and a known path with the wrong method 405, both as JSON."""
    status, error = agent.json("GET", "/nope")
    assert status == 404
    assert "/nope" in error["error"]
    status, headers, body = agent.request("GET", "/exec")
    assert (status, headers["Allow"]) == (405, "POST")
    assert "POST" in json.loads(body)["error"]


def test_exec_streams_output_while_the_command_runs(agent: RunningAgent) -> None:
    """Output reaches the client as it is produced, not when the command ends."""
    started = time.monotonic()
    conn, frames = agent.start_exec([("cmd", "sh"), ("cmdArg", "-c"),
                                     ("cmdArg", "echo first; sleep 1; echo second")])
    try:
        assert frames.next() == (b"o", b"first\n")
        first_at = time.monotonic() - started
        output, result = frames.rest()
    finally:
        conn.close()
    assert first_at < 0.8
    assert time.monotonic() - started >= 1.0
    assert output == b"second\n"
    assert result == {"exit_code": 0, "signal": None, "state": "ok"}


@pytest.mark.parametrize(("script", "result"), [
    ("exit 0", {"exit_code": 0, "signal": None, "state": "ok"}),
    ("exit 3", {"exit_code": 3, "signal": None, "state": "exit status 3"}),
    ("kill -TERM $$", {"exit_code": None, "signal": "SIGTERM", "state": "signal: SIGTERM"}),
])
def test_exec_final_frame_reports_how_the_command_ended(
        agent: RunningAgent, script: str, result: dict[str, object]) -> None:
    """The final frame says whether the command succeeded, failed with a code, or was killed."""
    assert agent.run("sh", "-c", script) == (b"", result)


def test_exec_without_framing_puts_the_state_in_a_trailer(agent: RunningAgent) -> None:
    """Without X-Buildlet-Framing the body is raw output and the state a Process-State trailer."""
    head, output, trailers = raw_exec(agent, [("cmd", "sh"), ("cmdArg", "-c"),
                                              ("cmdArg", "echo out; echo err >&2; exit 7")])
    assert head.startswith(b"HTTP/1.1 200")
    assert b"\r\nTrailer: Process-State" in head
    assert b"\r\nTransfer-Encoding: chunked" in head
    assert output == b"out\nerr\n"
    assert trailers == b"Process-State: exit status 7\r\n\r\n"


def test_exec_of_a_missing_command_reports_an_error_state(agent: RunningAgent) -> None:
    """A command that cannot start is reported in the final status, not as an HTTP error."""
    output, result = agent.run("no-such-command-anywhere")
    assert output == b""
    assert result["exit_code"] is None
    assert str(result["state"]).startswith("error: cannot start 'no-such-command-anywhere'")


def test_exec_uses_env_and_dir(agent: RunningAgent) -> None:
    """env entries reach the command, dir is its working directory and WORKDIR is set."""
    (agent.workdir / "sub").mkdir()
    output, result = agent.run("sh", "-c", 'echo "$GREETING $WORKDIR"; pwd',
                               env="GREETING=hello", dir="sub")
    workdir = os.path.realpath(agent.workdir)
    assert output.decode() == f"hello {workdir}\n{workdir}/sub\n"
    assert result["state"] == "ok"


def test_exec_runs_a_cmd_with_a_slash_from_the_workdir_as_go_does(agent: RunningAgent) -> None:
    """A cmd with a slash is a path in the workdir, run in its own dir unless dir is given."""
    script = agent.workdir / "tools" / "bin" / "hello"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho hello from $0 in $(pwd)\n")
    script.chmod(0o755)
    tools = os.path.realpath(agent.workdir / "tools")
    output, result = agent.run("tools/bin/hello")
    assert (output, result["state"]) == (
        f"hello from {tools}/bin/hello in {tools}/bin\n".encode(), "ok")
    output, result = agent.run("tools/bin/hello", dir="tools")
    assert output == f"hello from {tools}/bin/hello in {tools}\n".encode()


@pytest.mark.parametrize("bad_dir", ["..", "../outside", "/tmp", "escape", "missing"])
def test_exec_dir_must_be_a_directory_inside_the_workdir(
        agent: RunningAgent, outside: Path, bad_dir: str) -> None:
    """An exec dir escaping the workdir (by '..', absolute path or symlink) or missing is 400."""
    (agent.workdir / "escape").symlink_to(outside)
    status, _, body = agent.post_form("/exec", [("cmd", "true"), ("dir", bad_dir)])
    assert status == 400
    assert bad_dir in json.loads(body)["error"]


def test_exec_without_cmd_is_a_bad_request(agent: RunningAgent) -> None:
    """An exec form without cmd, or with a malformed env entry, is 400 and runs nothing."""
    assert agent.post_form("/exec", [("cmdArg", "x")])[0] == 400
    assert agent.post_form("/exec", [("cmd", "true"), ("env", "NOEQUALS")])[0] == 400


def test_client_disconnect_kills_the_command_after_the_grace_period(tmp_path: Path) -> None:
    """A command whose client hangs up and never comes back is killed, with what it started,
    once --exec-grace has passed, and its status says why."""
    agent = start_agent(tmp_path, "--exec-grace", "1")
    try:
        conn, frames = agent.start_exec([("cmd", "sh"), ("cmdArg", "-c"),
                                         ("cmdArg", "sleep 60 & echo $!; wait")])
        exec_id = frames.header("X-Buildlet-Exec-Id")
        kind, payload = frames.next()
        pid = int(payload)
        assert kind == b"o"
        conn.close()
        time.sleep(0.5)
        assert process_alive(pid)
        assert wait_until_gone(pid)
        deadline = time.monotonic() + 5
        while agent.json("GET", "/status")[1]["running"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        conn, frames = attach(agent, f"id={exec_id}&offset={len(payload)}")
        assert frames.rest() == (b"", {"exit_code": None, "signal": "SIGKILL", "state":
                                       "signal: SIGKILL (no client re-attached within 1 s)"})
        conn.close()
    finally:
        assert agent.stop() == 0


def attach(agent: RunningAgent, query: str) -> tuple[http.client.HTTPConnection, FrameReader]:
    """GET /exec/attach?QUERY framed; return the open connection and a reader for its frames."""
    conn = agent.connect()
    conn.request("GET", f"/exec/attach?{query}",
                 headers={"X-Buildlet-Secret": SECRET, "X-Buildlet-Framing": "1"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    return conn, FrameReader(response)


COUNTING = "for i in $(seq 1 300); do echo line $i; sleep 0.005; done; exit 3"
COUNTED = b"".join(b"line %d\n" % i for i in range(1, 301))


def test_a_dropped_exec_is_reattached_by_id_for_every_byte_once(agent: RunningAgent) -> None:
    """A client that drops its connection mid-output re-attaches by id from the byte offset
    it had, and gets the rest of the output and the exit status, each byte exactly once."""
    conn, frames = agent.start_exec([("cmd", "sh"), ("cmdArg", "-c"), ("cmdArg", COUNTING)])
    exec_id = frames.header("X-Buildlet-Exec-Id")
    assert exec_id
    assert frames.header("X-Buildlet-Exec-Offset") == "0"
    received = b""
    while len(received) < 200:
        kind, payload = frames.next()
        assert kind == b"o"
        received += payload
    conn.sock.shutdown(socket.SHUT_RDWR)  # cut mid-output, unread frames and all
    conn.close()
    conn, frames = attach(agent, f"id={exec_id}&offset={len(received)}")
    assert frames.header("X-Buildlet-Exec-Offset") == str(len(received))
    rest, result = frames.rest()
    conn.close()
    assert received + rest == COUNTED
    assert result == {"exit_code": 3, "signal": None, "state": "exit status 3"}


def test_attach_after_the_end_gives_the_rest_with_a_trailer_or_frames(agent: RunningAgent) -> None:
    """An exec that ended while no client was there is read back from any offset, plain (with
    the Process-State trailer) or framed, as often as asked."""
    conn, frames = agent.start_exec([("cmd", "sh"), ("cmdArg", "-c"),
                                     ("cmdArg", "sleep 0.3; echo one; echo two; exit 4")])
    exec_id = frames.header("X-Buildlet-Exec-Id")
    conn.close()
    time.sleep(1.0)
    body = f"GET /exec/attach?id={exec_id}&offset=4 HTTP/1.1\r\nHost: agent\r\n"
    head, output, trailers = raw_request(agent, body)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"\r\nTrailer: Process-State" in head
    assert b"\r\nX-Buildlet-Exec-Offset: 4\r\n" in head + b"\r\n"
    assert (output, trailers) == (b"two\n", b"Process-State: exit status 4\r\n\r\n")
    for _ in range(2):
        conn, frames = attach(agent, f"id={exec_id}")
        assert frames.rest() == (b"one\ntwo\n", {"exit_code": 4, "signal": None,
                                                  "state": "exit status 4"})
        conn.close()


def test_attach_refuses_unknown_ids_and_offsets_past_the_output(agent: RunningAgent) -> None:
    """An id the agent does not know is 404 and an offset past the output so far is 400."""
    status, error = agent.json("GET", "/exec/attach?id=nope")
    assert status == 404
    assert "'nope'" in error["error"]
    conn, frames = agent.start_exec([("cmd", "echo"), ("cmdArg", "hi")])
    exec_id = frames.header("X-Buildlet-Exec-Id")
    frames.rest()
    conn.close()
    status, error = agent.json("GET", f"/exec/attach?id={exec_id}&offset=4")
    assert status == 400
    assert "offset 4" in error["error"]
    assert agent.json("POST", "/exec/kill?id=nope")[0] == 404


def test_exec_kill_ends_a_detached_command(agent: RunningAgent) -> None:
    """POST /exec/kill kills a running exec's process group at once, client or not."""
    conn, frames = agent.start_exec([("cmd", "sh"), ("cmdArg", "-c"),
                                     ("cmdArg", "sleep 60 & echo $!; wait")])
    exec_id = frames.header("X-Buildlet-Exec-Id")
    pid_line = frames.next()[1]
    pid = int(pid_line)
    conn.close()
    assert agent.json("POST", f"/exec/kill?id={exec_id}") == (200, {"id": exec_id,
                                                                    "killed": True})
    assert wait_until_gone(pid)
    conn, frames = attach(agent, f"id={exec_id}")
    assert frames.rest() == (pid_line, {"exit_code": None, "signal": "SIGKILL",
                                        "state": "signal: SIGKILL (killed by /exec/kill)"})
    conn.close()
    assert agent.json("POST", f"/exec/kill?id={exec_id}")[1]["killed"] is False


def test_the_spool_keeps_the_latest_output_and_waits_for_a_slow_client(tmp_path: Path) -> None:
    """Past --exec-spool bytes a detached exec keeps only its latest output (the attach says
    where it starts), while an attached client, however slow, loses nothing."""
    agent = start_agent(tmp_path, "--exec-spool", "1000")
    script = "for i in $(seq 1000 1999); do echo $i; done"
    everything = b"".join(b"%d\n" % i for i in range(1000, 2000))
    try:
        conn, frames = agent.start_exec([("cmd", "sh"), ("cmdArg", "-c"), ("cmdArg", script)])
        exec_id = frames.header("X-Buildlet-Exec-Id")
        assert exec_id is not None
        received = b""
        while len(received) < 3000:
            received += frames.next()[1]
            time.sleep(0.01)  # slower than the command
        conn.close()
        assert received == everything[:len(received)]
        time.sleep(1.0)
        conn, frames = attach(agent, "id=" + exec_id)
        assert frames.header("X-Buildlet-Exec-Offset") == str(len(everything) - 1000)
        assert frames.rest() == (everything[-1000:], {"exit_code": 0, "signal": None,
                                                      "state": "ok"})
        conn.close()
    finally:
        assert agent.stop() == 0


def test_writetgz_then_tgz_round_trips_a_tree(agent: RunningAgent) -> None:
    """A tree unpacked by /writetgz comes back whole from /tgz, modes and links included."""
    archive = make_tgz(
        member("./", tarfile.DIRTYPE, mode=0o755),
        member("bin/", tarfile.DIRTYPE, mode=0o755),
        member("bin/run.sh", data=b"#!/bin/sh\necho hi\n", mode=0o755),
        member("src/main.c", data=b"int main(void) { return 0; }\n"),
        member("src/link.c", tarfile.SYMTYPE, linkname="main.c"),
        member("src/hard.c", tarfile.LNKTYPE, linkname="src/main.c"),
    )
    status, answer = agent.json("PUT", "/writetgz?dir=dest/tree", archive)
    assert (status, answer) == (200, {"dir": "dest/tree", "entries": 5})
    tree = agent.workdir / "dest" / "tree"
    assert stat.S_IMODE((tree / "bin" / "run.sh").stat().st_mode) == 0o755
    assert os.readlink(tree / "src" / "link.c") == "main.c"
    assert (tree / "src" / "hard.c").stat().st_ino == (tree / "src" / "main.c").stat().st_ino
    assert not [p for p in agent.workdir.iterdir() if p.name.startswith(".buildlet")]

    status, headers, body = agent.request("GET", "/tgz?dir=dest/tree")
    assert (status, headers["Transfer-Encoding"]) == (200, "chunked")
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["bin", "bin/run.sh", "src", "src/hard.c", "src/link.c",
                                   "src/main.c"]
        assert members["bin/run.sh"].mode == 0o755
        assert members["src/link.c"].linkname == "main.c"
        extracted = tar.extractfile("src/main.c")
        assert extracted is not None
        assert extracted.read() == b"int main(void) { return 0; }\n"


def test_writetgz_merges_into_an_existing_directory(agent: RunningAgent) -> None:
    """Unpacking over an existing tree replaces the archive's files and keeps the others."""
    (agent.workdir / "keep.txt").write_text("kept\n")
    (agent.workdir / "over.txt").write_text("old\n")
    archive = make_tgz(member("over.txt", data=b"new\n"), member("sub/new.txt", data=b"n\n"))
    assert agent.json("PUT", "/writetgz", archive)[0] == 200
    assert snapshot(agent.workdir) == {"keep.txt": b"kept\n", "over.txt": b"new\n",
                                       "sub": "dir", "sub/new.txt": b"n\n"}


@pytest.mark.parametrize(("members", "named"), [
    ([member("../escape.txt", data=b"x")], "../escape.txt"),
    ([member("/tmp/buildlet-absolute.txt", data=b"x")], "/tmp/buildlet-absolute.txt"),
    ([member("evil", tarfile.SYMTYPE, linkname="../outside"),
      member("evil/pwned.txt", data=b"x")], "evil"),
    ([member("evil", tarfile.SYMTYPE, linkname="/tmp"),
      member("evil/pwned.txt", data=b"x")], "evil"),
    ([member("here", tarfile.SYMTYPE, linkname="."),
      member("up", tarfile.SYMTYPE, linkname="here/..")], "up"),
    ([member("fine", tarfile.SYMTYPE, linkname="sub"), member("sub/", tarfile.DIRTYPE),
      member("fine/through.txt", data=b"x")], "fine/through.txt"),
    ([member("hard", tarfile.LNKTYPE, linkname="../outside/secret.txt")], "hard"),
    ([member("hard", tarfile.LNKTYPE, linkname="/etc/passwd")], "hard"),
    ([member("null", tarfile.CHRTYPE)], "null"),
    ([member("disk", tarfile.BLKTYPE)], "disk"),
    ([member("pipe", tarfile.FIFOTYPE)], "pipe"),
], ids=["dotdot", "absolute", "symlink-up", "symlink-absolute", "symlink-chain",
        "through-symlink", "hardlink-up", "hardlink-absolute", "chardev", "blockdev", "fifo"])
def test_writetgz_refuses_unsafe_archives_and_writes_nothing(
        agent: RunningAgent, outside: Path, members: list[tuple[tarfile.TarInfo, bytes]],
        named: str) -> None:
    """Each tar attack is a 400 naming the bad member, and neither workdir nor outside change."""
    (agent.workdir / "existing.txt").write_text("before\n")
    before = snapshot(agent.workdir), snapshot(outside)
    archive = make_tgz(member("good.txt", data=b"fine\n"), *members)
    status, error = agent.json("PUT", "/writetgz?dir=target", archive)
    assert status == 400
    assert repr(named) in error["error"]
    assert (snapshot(agent.workdir), snapshot(outside)) == before
    assert not Path("/tmp/buildlet-absolute.txt").exists()


@pytest.mark.parametrize("cut", ["half", "trailer"])
def test_writetgz_refuses_a_truncated_gzip_and_writes_nothing(agent: RunningAgent,
                                                              cut: str) -> None:
    """A gzip cut short, even just its trailer, is a 400 and nothing is unpacked."""
    archive = make_tgz(member("a.txt", data=os.urandom(50_000)), member("b.txt", data=b"b"))
    truncated = archive[:len(archive) // 2] if cut == "half" else archive[:-4]
    status, error = agent.json("PUT", "/writetgz", truncated)
    assert status == 400
    assert "gzip" in error["error"] or "tar" in error["error"]
    assert snapshot(agent.workdir) == {}


def test_writetgz_refuses_a_dir_file_clash_and_writes_nothing(agent: RunningAgent) -> None:
    """An archive file where the target has a directory is a 409 and nothing is unpacked."""
    (agent.workdir / "clash").mkdir()
    before = snapshot(agent.workdir)
    archive = make_tgz(member("first.txt", data=b"1"), member("clash", data=b"file"))
    assert agent.json("PUT", "/writetgz", archive)[0] == 409
    assert snapshot(agent.workdir) == before


def test_tgz_comes_in_chunks_of_tens_of_kib(agent: RunningAgent) -> None:
    """/tgz gathers gzip's output (about 10 KiB a piece) into chunks of about 64 KiB: a chunk
    per piece would cost a send here and a read, a scan and a send at every proxy."""
    data = os.urandom(1 << 20)
    (agent.workdir / "big").mkdir()
    (agent.workdir / "big" / "random.bin").write_bytes(data)
    head, chunks, trailers = raw_chunks(agent, "GET /tgz?dir=big HTTP/1.1\r\nHost: agent\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert trailers == b"\r\n"
    sizes = [len(chunk) for chunk in chunks]
    assert len(sizes) > 1
    assert min(sizes[:-1]) >= 32 * 1024, sizes
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:gz") as tar:
        extracted = tar.extractfile("random.bin")
        assert extracted is not None
        assert extracted.read() == data


def test_tgz_of_a_missing_directory_is_404(agent: RunningAgent) -> None:
    """Asking for a tar.gz of a directory that does not exist is 404."""
    assert agent.json("GET", "/tgz?dir=nowhere")[0] == 404


def test_ls_lists_entries_with_digests(agent: RunningAgent) -> None:
    """GET /ls in JSON lists names, sizes, modes and kinds, recursively, with sha256 on request."""
    (agent.workdir / "sub").mkdir()
    (agent.workdir / "a.txt").write_bytes(b"alpha")
    (agent.workdir / "sub" / "b.txt").write_bytes(b"beta")
    (agent.workdir / "a.txt").chmod(0o640)
    status, flat = agent.json("GET", "/ls", headers={"Accept": "application/json"})
    assert status == 200
    assert [(e["name"], e["is_dir"]) for e in flat] == [("a.txt", False), ("sub", True)]
    status, deep = agent.json("GET", "/ls?dir=.&recursive=1&digest=1&format=json")
    entries = {e["name"]: e for e in deep}
    assert sorted(entries) == ["a.txt", "sub", "sub/b.txt"]
    assert entries["a.txt"]["mode"] == "0640"
    assert entries["a.txt"]["size"] == 5
    assert entries["a.txt"]["sha256"] == hashlib.sha256(b"alpha").hexdigest()
    assert entries["sub/b.txt"]["sha256"] == hashlib.sha256(b"beta").hexdigest()
    assert "sha256" not in entries["sub"]


def test_removeall_removes_files_and_trees_but_not_through_links(
        agent: RunningAgent, outside: Path) -> None:
    """POST /removeall deletes files, trees and links (not their targets); missing is fine."""
    (agent.workdir / "tree" / "deep").mkdir(parents=True)
    (agent.workdir / "tree" / "deep" / "f").write_text("x")
    (agent.workdir / "tree" / "deep").chmod(0o555)
    (agent.workdir / "file.txt").write_text("x")
    (agent.workdir / "link").symlink_to(outside)
    (agent.workdir / "kept.txt").write_text("x")
    status, _, body = agent.post_form("/removeall", [
        ("path", "tree"), ("path", "file.txt"), ("path", "link"), ("path", "missing")])
    assert (status, json.loads(body)) == (200, {"removed": ["tree", "file.txt", "link"]})
    assert snapshot(agent.workdir) == {"kept.txt": b"x"}
    assert (outside / "secret.txt").exists()


@pytest.mark.parametrize("bad_path", ["../outside", "/etc", "link/secret.txt"])
def test_removeall_refuses_paths_outside_the_workdir(
        agent: RunningAgent, outside: Path, bad_path: str) -> None:
    """A removeall path outside the workdir is 400; nothing goes."""
    (agent.workdir / "link").symlink_to(outside)
    (agent.workdir / "kept.txt").write_text("x")
    before = snapshot(agent.workdir), snapshot(outside)
    status, _, _ = agent.post_form("/removeall", [("path", "kept.txt"), ("path", bad_path)])
    assert status == 400
    assert (snapshot(agent.workdir), snapshot(outside)) == before


def test_write_then_read_a_file(agent: RunningAgent) -> None:
    """PUT /write stores the body with its mode (creating parents) and GET /read returns it."""
    data = os.urandom(300_000)
    status, answer = agent.json("PUT", "/write?path=new/dir/blob.bin&mode=493", data)
    assert (status, answer) == (200, {"path": "new/dir/blob.bin", "size": len(data)})
    path = agent.workdir / "new" / "dir" / "blob.bin"
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    status, headers, body = agent.request("GET", "/read?path=new/dir/blob.bin")
    assert (status, headers["Content-Length"], body) == (200, str(len(data)), data)
    assert os.listdir(path.parent) == ["blob.bin"]


def test_write_accepts_a_chunked_upload(agent: RunningAgent) -> None:
    """A request body sent with chunked transfer encoding is stored whole."""
    pieces = [b"one ", b"two ", b"three"]
    conn = agent.connect()
    try:
        conn.request("PUT", "/write?path=chunked.txt", body=iter(pieces), encode_chunked=True,
                     headers={"X-Buildlet-Secret": SECRET, "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())["size"]) == (200, 13)
        conn.request("GET", "/read?path=chunked.txt", headers={"X-Buildlet-Secret": SECRET})
        assert conn.getresponse().read() == b"one two three"  # the same kept-alive connection
    finally:
        conn.close()


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/read?path=link/secret.txt"), ("GET", "/read?path=../outside/secret.txt"),
    ("PUT", "/write?path=link/new.txt"), ("PUT", "/write?path=/tmp/buildlet-absolute.txt"),
    ("GET", "/ls?dir=link"), ("GET", "/tgz?dir=link"), ("PUT", "/writetgz?dir=link"),
])
def test_file_endpoints_refuse_paths_outside_the_workdir(
        agent: RunningAgent, outside: Path, method: str, path: str) -> None:
    """Every path parameter that escapes the workdir, directly or through a symlink, is 400."""
    (agent.workdir / "link").symlink_to(outside)
    before = snapshot(outside)
    status, error = agent.json(method, path, b"" if method == "PUT" else None)
    assert status == 400
    assert repr(path.split("=", 1)[1]) in error["error"]
    assert snapshot(outside) == before


def test_read_of_a_missing_file_is_404(agent: RunningAgent) -> None:
    """Reading a file that does not exist is a 404 naming it."""
    status, error = agent.json("GET", "/read?path=nope.txt")
    assert status == 404
    assert "nope.txt" in error["error"]


def test_halt_answers_then_exits_zero_killing_commands(agent: RunningAgent) -> None:
    """POST /halt answers {"halted": true}, kills running commands and exits with code 0."""
    conn, frames = agent.start_exec([("cmd", "sh"), ("cmdArg", "-c"),
                                     ("cmdArg", "sleep 60 & echo $!; wait")])
    try:
        pid = int(frames.next()[1])
        assert agent.json("POST", "/halt") == (200, {"halted": True})
        assert agent.proc.wait(5) == 0
        assert wait_until_gone(pid)
    finally:
        conn.close()


def test_sigterm_exits_zero_killing_commands(agent: RunningAgent) -> None:
    """SIGTERM shuts the agent down cleanly, killing running commands."""
    conn, frames = agent.start_exec([("cmd", "sh"), ("cmdArg", "-c"),
                                     ("cmdArg", "echo $$; exec sleep 60")])
    try:
        pid = int(frames.next()[1])
        assert agent.json("GET", "/status")[1]["running"] == 1
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(5) == 0
        assert wait_until_gone(pid)
    finally:
        conn.close()


def test_ready_file_and_secret_from_the_environment(tmp_path: Path) -> None:
    """--ready-file receives the announced URL and --secret-env replaces --secret-file."""
    ready = tmp_path / "ready"
    running = start_agent(tmp_path, "--ready-file", str(ready),
                          secret_args=["--secret-env", "AGENT_SECRET"],
                          env={**os.environ, "AGENT_SECRET": SECRET})
    try:
        assert ready.read_text() == running.url
        assert running.json("GET", "/status")[0] == 200
    finally:
        assert running.stop() == 0


def test_agent_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    """An empty secret stops the agent at startup with exit code 2 and a message."""
    (tmp_path / "empty").write_text("\n")
    done = subprocess.run(
        [AGENT_PYTHON, *AGENT, "--listen", "127.0.0.1:0", "--workdir",
         str(tmp_path / "work"), "--secret-file", str(tmp_path / "empty")],
        capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "secret" in done.stderr
    assert done.stdout == ""


def test_agent_starts_within_a_second(tmp_path: Path) -> None:
    """A plain start reaches BUILDLET-READY in under a second."""
    started = time.monotonic()
    running = start_agent(tmp_path)
    elapsed = time.monotonic() - started
    assert running.stop() == 0
    assert elapsed < 1.0
