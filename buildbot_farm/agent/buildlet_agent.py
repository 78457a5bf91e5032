#!/usr/bin/env python3
"""Buildlet agent: the small HTTP service a coordinator drives on a remote build host.

This is one file, standard library only, for Python >= 3.9 on POSIX, so that it can be copied
into a container or onto a host and started as::

    python3 buildlet_agent.py --listen HOST:PORT --workdir DIR --secret-file FILE

Once listening it prints ``BUILDLET-READY http://HOST:PORT`` (and writes the URL to
``--ready-file`` if given). The protocol follows Go's buildlet (gomote). Every request needs the
header ``X-Buildlet-Secret``; every path a client names is resolved inside the work directory;
every error is JSON ``{"error": "..."}``.

* ``GET /status``: agent and host facts, with ``Version``, the integer protocol version Go's
  buildlet client decodes (its ``Status{Version int}``).
* ``GET /workdir``: the work directory's absolute path, as plain text.
* ``POST /exec`` (form: ``cmd``, ``cmdArg``..., ``dir``, ``env``..., ``mode``): run a command and
  stream its output; the result comes in the ``Process-State`` trailer, or, with
  ``X-Buildlet-Framing: 1``, as frames (type byte, 4-byte big-endian length, payload; ``o`` is
  output, ``x`` the final JSON ``{"exit_code", "signal", "state"}``). The answer's header
  ``X-Buildlet-Exec-Id`` names the run.
* ``GET /exec/attach?id=&offset=``: re-attach to a run whose connection dropped: its output
  from byte ``offset`` (what the client had), then its status, encoded as /exec (plain with
  the trailer, or framed). ``X-Buildlet-Exec-Offset`` says where the output really starts:
  later than ``offset`` if those bytes fell out of the spool. A newer attach takes over.
  ``POST /exec/kill?id=``: kill a run's process group (``{"id", "killed"}``).

  A run's output goes to a spool that keeps its latest ``--exec-spool`` bytes (64 MiB), and
  its status is kept ``--exec-keep`` seconds (300; at most 100 ended runs) after it ends.
  While a client follows a run, the command waits for it rather than let unread output fall
  out of the spool; with no client, the oldest output is dropped. A run whose client went
  away keeps running for ``--exec-grace`` seconds (120; 0 kills it at once) waiting for a
  re-attach, then its process group is killed (state ``signal: SIGKILL (no client
  re-attached within N s)``), so a client that never re-attaches (Go's) leaves nothing
  running for long. /halt kills every run.
* ``PUT /writetgz?dir=``: unpack a tar.gz body, all or nothing. ``GET /tgz?dir=``: stream one.
  (Go's ``POST /writetgz`` form ``url=``, which would make the agent fetch any address, is
  refused with 400.)
* ``GET /ls?dir=&recursive=1&digest=1&skip=``: Go's line format (mode, tab, name, and for
  regular files size, RFC 3339 modification time and with digest the SHA-1); JSON with
  ``format=json`` or ``Accept: application/json``.
* ``POST /removeall`` (form: ``path``...; ``.`` empties the workdir), ``PUT /write?path=&mode=``
  (``mode`` in decimal, as Go's client sends it: 420 is 0644), ``GET /read?path=``: files.
* ``POST /halt``: answer, kill running commands and exit.

With ``--preemption signal|gce|aws|azure`` the agent watches for its host's preemption (a
signal from a shutdown hook, or the cloud's metadata service at ``--preemption-url``). Once
noticed, ``/status`` carries ``"preempted": {"detector", "reason", "at"}`` and every answer
the header ``X-Buildlet-Preempted: REASON``.

With ``--prestart-worker PYTHON`` the agent keeps a PYTHON process that has already imported
buildbot-worker, waiting on a unix socket (``FARM_PRESTARTED_WORKER`` in every exec's
environment) to be handed a worker's configuration; ``/status`` says ``prestarted_worker``.
It dies with the agent.

Every agent can enforce its own lease deadline: ``POST /deadline`` (form ``seconds``) says
the agent must be renewed within that many seconds (``GET /deadline`` tells what is left,
``{"seconds": null}`` when there is none); ``--deadline SECONDS`` sets the first one. A
coordinator renews it while it holds the buildlet. When it passes, the agent halts itself
and removes what it made: its running commands, its pre-started worker, its work directory
and each ``--owned-path``. So a coordinator that never comes back leaves nothing running.

With ``--run-as USER`` an agent started as root becomes USER (its uid, gid and groups) once it
has read its secret and bound its port, and sets no-new-privileges, so that nothing it runs
can become root again. Commands inherit the agent's environment: start it with a small one
(and, as ``--secret-env`` leaves the secret in it, prefer ``--secret-file``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gzip
import hashlib
import hmac
import http.client
import http.server
import io
import json
import os
import platform
import posixpath
import pwd
import secrets
import select
import selectors
import shutil
import signal
import socket
import socketserver
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Callable, ClassVar

VERSION = "1.0"
# The protocol version /status reports as "Version": the x/build buildlet version (cmd/buildlet's
# buildletVersion) whose endpoints this agent serves; Go's coordinator refuses lower ones.
PROTOCOL_VERSION = 29
SECRET_HEADER = "X-Buildlet-Secret"
PREEMPTED_HEADER = "X-Buildlet-Preempted"
FRAMING_HEADER = "X-Buildlet-Framing"
FRAMES_TYPE = "application/x-buildlet-frames"
EXEC_ID_HEADER = "X-Buildlet-Exec-Id"
EXEC_OFFSET_HEADER = "X-Buildlet-Exec-Offset"
EXEC_GRACE = 120.0  # seconds an exec whose client went away waits for one to re-attach
EXEC_KEEP = 300.0  # seconds an ended exec's output and status are kept for a re-attach
EXEC_SPOOL = 64 * 1024 * 1024  # bytes of each exec's latest output kept for a re-attach
MAX_KEPT_EXECS = 100  # ended execs kept at most (the oldest are forgotten first)
CHUNK = 64 * 1024
MAX_FORM_BYTES = 1024 * 1024
IDLE_TIMEOUT = 600.0  # seconds a connection may idle, or a client not read, before it is dropped
POLL_INTERVAL = 0.2
ORPHAN_GRACE = 5.0  # seconds to read on after a command exits, if something else holds its pipe
GZIP_WBITS = 16 + zlib.MAX_WBITS  # tells zlib to expect, and check, a gzip header and trailer
SPECIAL_KINDS = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
                 tarfile.FIFOTYPE: "FIFO"}
OS_ERROR_STATUS = {errno.ENOENT: 404, errno.EACCES: 403, errno.EPERM: 403, errno.EEXIST: 409,
                   errno.ENOTDIR: 409, errno.EISDIR: 409, errno.ENOTEMPTY: 409,
                   errno.ENOSPC: 507, errno.EDQUOT: 507}


# --- Errors and parameters -------------------------------------------------------------------


class AgentError(Exception):
    """A failed request: the HTTP status and the message the client gets as JSON."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class ArchiveError(AgentError):
    """A tar.gz body that is corrupt or would write outside its target; nothing was written."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class SetupError(Exception):
    """A command-line problem that stops the agent from starting."""


def single(params: dict[str, list[str]], name: str, default: str | None = None) -> str:
    """Return the one value of a query or form field; 400 if repeated or missing with no default."""
    values = params.get(name)
    if not values:
        if default is None:
            raise AgentError(400, f"missing parameter {name!r}")
        return default
    if len(values) > 1:
        raise AgentError(400, f"parameter {name!r} was given {len(values)} times; give it once")
    return values[0]


def flag(params: dict[str, list[str]], name: str) -> bool:
    """Return a boolean query field given as 1/true or 0/false (absent is false)."""
    value = single(params, name, "0").lower()
    if value not in ("1", "true", "0", "false", ""):
        raise AgentError(400, f"parameter {name!r} must be 1 or 0, not {value!r}")
    return value in ("1", "true")


def parse_mode(text: str) -> int:
    """Parse a permission given in decimal, as Go's buildlet client sends it (420 is 0644)."""
    mode = int(text, 10) if text.isdigit() else -1
    if not 0 <= mode <= 0o777:
        raise AgentError(400, f"mode {text!r} is not a decimal permission from 0 to 511, "
                              "e.g. 420 for 0644 or 493 for 0755")
    return mode


# --- Paths inside the work directory ---------------------------------------------------------


def within(root: str, path: str) -> bool:
    """Tell whether the absolute path is root or lies under it."""
    return os.path.commonpath([root, path]) == root


class Workdir:
    """The directory the agent serves; every path a client names is resolved inside it."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def resolve(self, rel: str, follow_last: bool = True) -> str:
        """Return the absolute path for rel; 400 if it is absolute or leads outside the workdir.

        With follow_last false a symlink at the last component is returned as itself, which is
        what removing or replacing an entry needs.
        """
        if "\0" in rel:
            raise AgentError(400, f"path {rel!r} contains a NUL byte")
        if rel.startswith("/"):
            raise AgentError(400, f"path {rel!r} is absolute; give a path relative to the workdir")
        parts = [part for part in rel.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise AgentError(400, f"path {rel!r} contains '..'; give a path inside the workdir")
        if not parts:
            return self.root
        if follow_last:
            path = os.path.realpath(os.path.join(self.root, *parts))
        else:
            path = os.path.join(os.path.realpath(os.path.join(self.root, *parts[:-1])), parts[-1])
        if not within(self.root, path):
            raise AgentError(400, f"path {rel!r} leads outside the workdir through a symlink")
        return path


def existing(path: str, rel: str) -> os.stat_result:
    """Stat path (following links); 404 naming rel if there is nothing there."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise AgentError(404, f"{rel!r} does not exist in the workdir") from None


# --- Request and response bodies -------------------------------------------------------------


class RequestBody(io.BufferedIOBase):
    """The request body, read incrementally from Content-Length or chunked framing."""

    def __init__(self, rfile: io.BufferedIOBase, encoding: str, length: str | None) -> None:
        super().__init__()
        self._rfile = rfile
        self._chunked = encoding.strip().lower() == "chunked"
        if encoding and not self._chunked:
            raise AgentError(501, f"Transfer-Encoding {encoding!r} is not supported; use chunked")
        if self._chunked or length is None:
            self._left = 0
        elif length.strip().isdigit():
            self._left = int(length)
        else:
            raise AgentError(400, f"Content-Length {length!r} is not a number")
        self.finished = not self._chunked and self._left == 0

    def read(self, size: int | None = -1) -> bytes:
        """Return up to size bytes (all that is left if size is negative); b"" at the end."""
        if size is None or size < 0:
            return b"".join(iter(partial(self.read, CHUNK), b""))
        if self.finished or size == 0:
            return b""
        if self._left == 0:
            self._left = self._next_chunk_size()
            if self._left == 0:
                while self._rfile.readline(CHUNK) not in (b"\r\n", b"\n", b""):
                    pass  # skip request trailers
                self.finished = True
                return b""
        data = self._rfile.read(min(size, self._left))
        if not data:
            raise AgentError(400, "the request body ended early: the client stopped sending it")
        self._left -= len(data)
        if self._left == 0:
            if not self._chunked:
                self.finished = True
            elif self._rfile.readline(CHUNK).strip():
                raise AgentError(400, "malformed chunked request body: a chunk is too long")
        return data

    def read_limited(self, limit: int) -> bytes:
        """Read the whole body; 413 if it is longer than limit."""
        data = self.read(limit + 1)
        while len(data) <= limit and not self.finished:
            data += self.read(limit + 1 - len(data))
        if len(data) > limit:
            raise AgentError(413, f"the request body is longer than {limit} bytes")
        return data

    def _next_chunk_size(self) -> int:
        line = self._rfile.readline(CHUNK)
        text = line.split(b";", 1)[0].strip()
        try:
            size = int(text, 16)
        except ValueError:
            size = -1
        if size < 0:
            raise AgentError(400, f"malformed chunked request body: bad chunk size {line[:40]!r}")
        return size


class GunzipReader(io.BufferedIOBase):
    """Decompresses a gzip stream from source, failing on corrupt data or a missing trailer."""

    def __init__(self, source: io.BufferedIOBase) -> None:
        super().__init__()
        self._source = source
        self._inflater = zlib.decompressobj(GZIP_WBITS)
        self._in_member = False
        self._input = b""
        self._output = b""

    def read(self, size: int | None = -1) -> bytes:
        """Return up to size decompressed bytes; b"" only after an intact end of stream."""
        if size is None or size < 0:
            return b"".join(iter(partial(self.read, CHUNK), b""))
        if not self._output:
            self._output = self._inflate_some()
        data, self._output = self._output[:size], self._output[size:]
        return data

    def _inflate_some(self) -> bytes:
        while True:
            if not self._input:
                self._input = self._source.read(CHUNK)
                if not self._input:
                    if self._in_member:
                        raise ArchiveError("the gzip stream is truncated; send the whole file")
                    return b""
            if not self._in_member:  # the first member, or another one concatenated after it
                self._inflater = zlib.decompressobj(GZIP_WBITS)
                self._in_member = True
            try:
                data = self._inflater.decompress(self._input, CHUNK)
            except zlib.error as exc:
                raise ArchiveError(f"the body is not valid gzip data ({exc})") from None
            if self._inflater.eof:
                self._input = self._inflater.unused_data
                self._in_member = False
            else:
                self._input = self._inflater.unconsumed_tail
            if data:
                return data


class ChunkedStream:
    """A response body sent in HTTP/1.1 chunks, each written to the socket at once."""

    def __init__(self, wfile: io.BufferedIOBase) -> None:
        self._wfile = wfile

    def write(self, data: bytes) -> int:
        """Send data as one chunk."""
        if data:
            self._wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        return len(data)

    def flush(self) -> None:
        """Flush the socket writer (chunks are not buffered, so this is cheap)."""
        self._wfile.flush()

    def finish(self, trailers: dict[str, str] | None = None) -> None:
        """End the body, with the given HTTP trailer fields."""
        fields = "".join(f"{name}: {value}\r\n" for name, value in (trailers or {}).items())
        self._wfile.write(b"0\r\n" + fields.encode("latin-1", "replace") + b"\r\n")


def frame(kind: bytes, payload: bytes) -> bytes:
    """Encode one frame of an application/x-buildlet-frames body."""
    return kind + struct.pack(">I", len(payload)) + payload


# --- Running commands ------------------------------------------------------------------------


@dataclass
class ExecRequest:
    """A validated /exec request: the argv, where to run it and its environment."""

    argv: list[str]
    cwd: str
    env: dict[str, str]

    @classmethod
    def from_form(cls, form: dict[str, list[str]], workdir: Workdir) -> ExecRequest:
        """Check the gomote form fields; 400 for anything wrong."""
        cmd = single(form, "cmd")
        if not cmd:
            raise AgentError(400, "cmd is empty; give the command to run")
        # gomote sends mode=sys to look cmd up on PATH; the one lookup rule (a bare name is found
        # on PATH; a relative path with a slash is in the workdir, not in dir, as with Go's
        # buildlet, which also runs such a command in its own directory when dir is not given)
        # serves both modes.
        mode = single(form, "mode", "")
        if mode not in ("", "sys"):
            raise AgentError(400, f"mode {mode!r} is not supported; send 'sys' or leave it out")
        rel_dir = single(form, "dir", "")
        if "/" in cmd and not cmd.startswith("/"):
            if not rel_dir and mode != "sys":
                rel_dir = posixpath.dirname(cmd)
            cmd = workdir.resolve(cmd)
        rel_dir = rel_dir or "."
        cwd = workdir.resolve(rel_dir)
        if not os.path.isdir(cwd):
            raise AgentError(400, f"dir {rel_dir!r} is not a directory in the workdir")
        env = dict(os.environ, WORKDIR=workdir.root)
        for item in form.get("env", []):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise AgentError(400, f"env entry {item!r} is not KEY=VALUE")
            env[key] = value
        if form.get("path"):
            env["PATH"] = expand_path(form["path"], env.get("PATH", ""), workdir.root)
        return cls([cmd, *form.get("cmdArg", [])], cwd, env)


def expand_path(elements: list[str], original: str, workdir: str) -> str:
    """The PATH Go's exec form field ``path`` asks for: its elements joined with ':'.

    In each element ``$PATH`` stands for the original PATH, ``$WORKDIR`` for the work
    directory and ``$EMPTY`` for nothing; elements that end up empty are left out.
    """
    expanded = (element.replace("$PATH", original).replace("$WORKDIR", workdir)
                .replace("$EMPTY", "") for element in elements)
    return ":".join(element for element in expanded if element)


@dataclass
class ExecResult:
    """How a command ended, as the Process-State text and as the final frame's JSON."""

    exit_code: int | None
    signal_name: str | None
    state: str

    @classmethod
    def from_returncode(cls, code: int) -> ExecResult:
        """Describe a Popen return code (negative means killed by that signal)."""
        if code >= 0:
            return cls(code, None, "ok" if code == 0 else f"exit status {code}")
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"SIG{-code}"
        return cls(None, name, f"signal: {name}")

    def to_json(self) -> bytes:
        """Encode the final frame's payload."""
        payload = {"exit_code": self.exit_code, "signal": self.signal_name, "state": self.state}
        return json.dumps(payload).encode()


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group a command leads, if anything in it is still alive."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class ProcessTable:
    """The commands now running, so that shutting down can kill their process groups."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._closed = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._procs)

    @contextlib.contextmanager
    def tracking(self, proc: subprocess.Popen[bytes]) -> Iterator[None]:
        """Track proc for the block; once the table is closed, new commands are killed at once."""
        with self._lock:
            self._procs.add(proc)
            if self._closed:
                kill_group(proc)
        try:
            yield
        finally:
            with self._lock:
                self._procs.discard(proc)

    def kill_all(self) -> None:
        """Kill every running command's process group and refuse new ones."""
        with self._lock:
            self._closed = True
            for proc in self._procs:
                kill_group(proc)


def peer_closed(sock: socket.socket) -> bool:
    """Tell whether a socket that polled readable was closed by the client."""
    try:
        return not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


class OutputSpool:
    """The last ``cap`` bytes of a command's output, in an unlinked temporary file used as a ring.

    ``size`` counts every byte ever appended; bytes before ``start`` have been overwritten.
    Not thread-safe: its ExecRun calls it under its lock.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.size = 0
        # Unlinked at once: it goes when closed, or with the agent however it ends; the run
        # outlives any one block, so close() closes it.
        self._file = tempfile.TemporaryFile(prefix="buildlet-exec-")  # noqa: SIM115

    @property
    def start(self) -> int:
        """The oldest offset still kept."""
        return max(0, self.size - self.cap)

    def append(self, data: bytes) -> None:
        """Add data (at most ``cap`` bytes), overwriting the oldest bytes past the cap."""
        pos = self.size % self.cap
        head = data[:self.cap - pos]
        self._write(head, pos)
        self._write(data[len(head):], 0)
        self.size += len(data)

    def _write(self, data: bytes, pos: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._file.fileno(), view, pos)
            view, pos = view[written:], pos + written

    def read(self, offset: int, limit: int) -> bytes:
        """Up to limit bytes from offset (which must be between ``start`` and ``size``)."""
        pos = offset % self.cap
        return os.pread(self._file.fileno(), min(limit, self.size - offset, self.cap - pos), pos)

    def close(self) -> None:
        """Drop the kept output."""
        self._file.close()


class ExecRun:
    """One command started by /exec: its output spool, its final status and who follows it.

    A thread copies the command's output into the spool whether or not a client is there. A
    client follows the run from a byte offset (``attach`` then ``follow``); a newer attach takes
    over from an older one. While a client follows, the command waits for it rather than let
    unread output fall out of the spool (flow control, as a plain pipe would give). With no
    client for ``grace`` seconds the command's process group is killed.
    """

    def __init__(self, exec_id: str, spool: OutputSpool, grace: float) -> None:
        self.id = exec_id
        self.grace = grace
        self.result: ExecResult | None = None
        self.ended_at: float | None = None
        self._spool = spool
        self._cond = threading.Condition()
        self._reader: object | None = None
        self._reader_pos = 0
        self._detached_at: float | None = time.monotonic()
        self._proc: subprocess.Popen[bytes] | None = None
        self._killed: str | None = None

    def start(self, request: ExecRequest, table: ProcessTable) -> None:
        """Start the command in its own process group and its output thread."""
        try:
            proc = subprocess.Popen(
                request.argv, cwd=request.cwd, env=request.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._end(ExecResult(None, None, f"error: cannot start {request.argv[0]!r}: {reason}"))
            return
        self._proc = proc
        threading.Thread(target=self._pump, args=(proc, table), name=f"exec-{self.id}",
                         daemon=True).start()

    def _pump(self, proc: subprocess.Popen[bytes], table: ProcessTable) -> None:
        assert proc.stdout is not None  # the command is always started with stdout=PIPE
        pipe = proc.stdout.fileno()
        error: OSError | None = None
        with table.tracking(proc), selectors.DefaultSelector() as selector:
            selector.register(pipe, selectors.EVENT_READ)
            try:
                exited_at: float | None = None
                while True:
                    if selector.select(POLL_INTERVAL):
                        data = os.read(pipe, CHUNK)
                        if not data:
                            break
                        self._store(data)
                    if exited_at is None and proc.poll() is not None:
                        exited_at = time.monotonic()
                        kill_group(proc)  # what it left behind would keep the pipe open
                    elif exited_at is not None and time.monotonic() - exited_at > ORPHAN_GRACE:
                        break  # a process that left the group holds the pipe; stop waiting for it
                    self._kill_if_abandoned()
                while True:  # output ended; wait for the command itself to exit
                    try:
                        proc.wait(POLL_INTERVAL)
                        break
                    except subprocess.TimeoutExpired:
                        self._kill_if_abandoned()
            except OSError as exc:  # the spool could not be written (a full disk): kill it
                error = exc
            finally:
                kill_group(proc)  # nothing the command started outlives it
                proc.wait()
                proc.stdout.close()
        if error is not None:
            self._end(ExecResult(None, None, f"error: the agent could not keep the command's "
                                             f"output ({error}), so it killed the command"))
            return
        result = ExecResult.from_returncode(proc.returncode)
        if self._killed and result.signal_name == "SIGKILL":
            result.state = f"{result.state} ({self._killed})"
        self._end(result)

    def _store(self, data: bytes) -> None:
        cap = self._spool.cap
        for start in range(0, len(data), cap):
            piece = data[start:start + cap]
            with self._cond:
                while (self._reader is not None
                       and self._spool.size + len(piece) - self._reader_pos > cap):
                    self._cond.wait(POLL_INTERVAL)  # the client is behind: let it catch up
                self._spool.append(piece)
                self._cond.notify_all()

    def _kill_if_abandoned(self) -> None:
        with self._cond:
            idle = self._detached_at
            if self._killed or self._reader is not None or idle is None:
                return
            if time.monotonic() - idle < self.grace:
                return
            self._killed = f"no client re-attached within {self.grace:g} s"
        assert self._proc is not None
        kill_group(self._proc)

    def kill(self, reason: str) -> bool:
        """Kill the command's process group; False if it had already ended."""
        with self._cond:
            if self.result is not None or self._proc is None:
                return False
            self._killed = self._killed or reason
        kill_group(self._proc)
        return True

    def _end(self, result: ExecResult) -> None:
        with self._cond:
            self.result = result
            self.ended_at = time.monotonic()
            self._cond.notify_all()

    def attach(self, offset: int) -> tuple[object, int]:
        """Become the run's client from offset; return a token for ``follow`` and the offset
        the output will really start at (later than offset if those bytes fell out of the spool).
        """
        with self._cond:
            if offset > self._spool.size:
                raise AgentError(400, f"offset {offset} is past the {self._spool.size} bytes of "
                                      f"output exec {self.id} has produced")
            token = object()
            self._reader, self._detached_at = token, None
            self._reader_pos = max(offset, self._spool.start)
            self._cond.notify_all()
            return token, self._reader_pos

    def follow(self, token: object, emit: Callable[[bytes], object],
               client: socket.socket) -> ExecResult | None:
        """Send the output from the attached offset to emit until the command's status is known.

        Returns the status, or None once the client hangs up or another attach takes over;
        the run then waits ``grace`` seconds for a client before it is killed.
        """
        try:
            while True:
                with self._cond:
                    if self._reader is not token:
                        return None
                    pos, data = self._reader_pos, b""
                    if pos == self._spool.size and self.result is None:
                        self._cond.wait(POLL_INTERVAL)
                    if pos < self._spool.size:
                        data = self._spool.read(pos, CHUNK)
                    result = self.result if pos == self._spool.size else None
                if data:
                    emit(data)
                    with self._cond:
                        if self._reader is token:
                            self._reader_pos = pos + len(data)
                            self._cond.notify_all()
                elif result is not None:
                    return result
                elif client_hung_up(client):
                    return None
        except OSError:
            return None  # the client stopped reading
        finally:
            with self._cond:
                if self._reader is token:
                    self._reader, self._detached_at = None, time.monotonic()
                    self._cond.notify_all()

    def close(self) -> None:
        """Drop the spooled output (the run is forgotten)."""
        with self._cond:
            self._spool.close()


def client_hung_up(client: socket.socket) -> bool:
    """Tell, without waiting, whether the client closed its connection."""
    readable, _, _ = select.select([client], [], [], 0)
    return bool(readable) and peer_closed(client)


class ExecRegistry:
    """Every exec the agent remembers, by id: running ones, and ended ones for ``keep`` seconds
    (at most MAX_KEPT_EXECS of them), so that a client whose connection dropped can come back.
    """

    def __init__(self, grace: float = EXEC_GRACE, keep: float = EXEC_KEEP,
                 spool_cap: int = EXEC_SPOOL) -> None:
        self.grace = grace
        self.keep = keep
        self.spool_cap = spool_cap
        self._lock = threading.Lock()
        self._runs: dict[str, ExecRun] = {}

    def start(self, request: ExecRequest, table: ProcessTable) -> tuple[ExecRun, object]:
        """Start request's command as a new run with a fresh id; return it and the token of
        its client, attached from byte 0 before the command starts, so that it misses nothing.
        """
        self._forget_old()
        run = ExecRun(secrets.token_hex(16), OutputSpool(self.spool_cap), self.grace)
        with self._lock:
            self._runs[run.id] = run
        token, _ = run.attach(0)
        run.start(request, table)
        return run, token

    def get(self, exec_id: str) -> ExecRun:
        """The run with that id; 404 if there is none (any more)."""
        self._forget_old()
        with self._lock:
            run = self._runs.get(exec_id)
        if run is None:
            raise AgentError(404, f"no exec {exec_id!r} here: it never ran on this agent, or it "
                                  f"ended more than {self.keep:g} s ago and was forgotten")
        return run

    def _forget_old(self) -> None:
        now = time.monotonic()
        with self._lock:
            ended = sorted((run.ended_at, run.id) for run in self._runs.values()
                           if run.ended_at is not None)
            old = [exec_id for at, exec_id in ended if now - at > self.keep]
            old += [exec_id for _, exec_id in ended[:len(ended) - MAX_KEPT_EXECS]]
            gone = [self._runs.pop(exec_id) for exec_id in set(old)]
        for run in gone:
            run.close()


# --- Archives and directory listings ---------------------------------------------------------


def archive_parts(path: str, member: str) -> list[str]:
    """Split a path from a tar member into components; 400 if absolute or containing '..'."""
    if path.startswith("/"):
        raise ArchiveError(f"member {member!r}: {path!r} is absolute; archives must be relative")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"member {member!r}: {path!r} contains '..' and could escape the target")
    return parts


class TarExtraction:
    """Unpacks tar members into an empty staging directory, refusing anything that could escape."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.count = 0
        self._symlinks: list[tuple[str, str]] = []

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """Unpack one member; 400 naming it if it is unsafe."""
        name = member.name
        parts = archive_parts(name, name)
        if not parts:
            if member.isdir():
                return  # "./": the target directory itself
            raise ArchiveError(f"member {name!r} has no file name")
        dest = os.path.join(self._make_parents(parts, name), parts[-1])
        if member.isdir():
            self._add_dir(dest, member)
        elif member.isreg():
            self._add_file(tar, dest, member)
        elif member.issym():
            self._add_symlink(parts, dest, member)
        elif member.islnk():
            self._add_hardlink(dest, member)
        else:
            kind = SPECIAL_KINDS.get(member.type, f"tar entry of type {member.type!r}")
            raise ArchiveError(f"member {name!r} is a {kind}; only files, dirs and links unpack")
        self.count += 1

    def check_symlinks(self) -> None:
        """Check every link again once all is unpacked, as later members change where links lead."""
        for path, name in self._symlinks:
            if not within(self.root, os.path.realpath(path)):
                raise ArchiveError(f"symlink {name!r} leads outside the target via other links")

    def _make_parents(self, parts: list[str], name: str) -> str:
        path = self.root
        for depth, part in enumerate(parts[:-1], start=1):
            path = os.path.join(path, part)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                os.mkdir(path)
                continue
            if stat.S_ISLNK(mode):
                link = "/".join(parts[:depth])
                raise ArchiveError(f"member {name!r} goes through the symlink {link!r}")
            if not stat.S_ISDIR(mode):
                raise ArchiveError(f"member {name!r} needs {'/'.join(parts[:depth])!r} to be a dir")
        return path

    def _clear(self, dest: str, name: str) -> None:
        try:
            mode = os.lstat(dest).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            raise ArchiveError(f"member {name!r} is not a directory, but an earlier member is")
        os.unlink(dest)  # a later member replaces an earlier one, as with tar

    def _add_dir(self, dest: str, member: tarfile.TarInfo) -> None:
        try:
            mode = os.lstat(dest).st_mode
        except FileNotFoundError:
            os.mkdir(dest)
        else:
            if not stat.S_ISDIR(mode):
                raise ArchiveError(f"member {member.name!r} is a dir, but an earlier one is not")
        os.chmod(dest, (member.mode & 0o777) | stat.S_IRWXU)  # we must be able to fill it

    def _add_file(self, tar: tarfile.TarFile, dest: str, member: tarfile.TarInfo) -> None:
        source = tar.extractfile(member)
        assert source is not None  # regular members always have data
        self._clear(dest, member.name)
        with source, open(dest, "xb") as out:  # "x" never follows a link left at dest
            shutil.copyfileobj(source, out, CHUNK)
        os.chmod(dest, member.mode & 0o777)
        os.utime(dest, (member.mtime, member.mtime))

    def _add_symlink(self, parts: list[str], dest: str, member: tarfile.TarInfo) -> None:
        target = member.linkname
        if not target or target.startswith("/"):
            raise ArchiveError(f"symlink {member.name!r} -> {target!r}: links must be relative")
        resolved = posixpath.normpath(posixpath.join(*parts[:-1], target))
        if resolved == ".." or resolved.startswith("../"):
            raise ArchiveError(f"symlink {member.name!r} -> {target!r} points outside the target")
        self._clear(dest, member.name)
        os.symlink(target, dest)
        self._symlinks.append((dest, member.name))

    def _add_hardlink(self, dest: str, member: tarfile.TarInfo) -> None:
        source = os.path.join(self.root, *archive_parts(member.linkname, member.name))
        if source == dest or os.path.realpath(source) != source or not os.path.isfile(source):
            raise ArchiveError(f"hard link {member.name!r} -> {member.linkname!r} must point to a "
                               "regular file unpacked earlier from the same archive")
        self._clear(dest, member.name)
        os.link(source, dest)


def extract_tgz(body: io.BufferedIOBase, root: str) -> int:
    """Unpack a tar.gz stream into the empty directory root and return the member count."""
    gunzip = GunzipReader(body)
    extraction = TarExtraction(root)
    try:
        with tarfile.open(fileobj=gunzip, mode="r|") as tar:
            for member in tar:
                extraction.add(tar, member)
    except tarfile.TarError as exc:
        raise ArchiveError(f"the body is not a valid tar.gz archive ({exc})") from None
    gunzip.read()  # the rest of the stream, so that its gzip trailer is checked too
    extraction.check_symlinks()
    return extraction.count


def replace_path(src: str, dst: str) -> None:
    """Rename src to dst, replacing a file or link (never following it), even across devices."""
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        if os.path.lexists(dst):
            os.unlink(dst)
        shutil.move(src, dst)


def plan_moves(src_dir: str, dst_dir: str, prefix: str = "") -> list[tuple[str, str]]:
    """List the renames that merge src_dir into dst_dir; 409 where a dir meets a non-dir."""
    moves = []
    for name in sorted(os.listdir(src_dir)):
        src, dst = os.path.join(src_dir, name), os.path.join(dst_dir, name)
        src_is_dir = stat.S_ISDIR(os.lstat(src).st_mode)
        try:
            dst_is_dir = stat.S_ISDIR(os.lstat(dst).st_mode)
        except FileNotFoundError:
            moves.append((src, dst))
            continue
        if src_is_dir and dst_is_dir:
            moves.extend(plan_moves(src, dst, f"{prefix}{name}/"))
        elif src_is_dir or dst_is_dir:
            kinds = ("a directory", "not one") if src_is_dir else ("not a directory", "one")
            raise AgentError(409, f"{prefix + name!r} is {kinds[0]} in the archive but {kinds[1]} "
                                  "in the target; remove it first with /removeall")
        else:
            moves.append((src, dst))
    return moves


def unpack_into(body: io.BufferedIOBase, target: str, scratch: str) -> int:
    """Unpack a tar.gz body into target, all or nothing, staging it in the scratch directory."""
    staging = tempfile.mkdtemp(prefix=".buildlet-unpack-", dir=scratch)
    try:
        os.chmod(staging, 0o755)
        count = extract_tgz(body, staging)
        if os.path.lexists(target):
            for src, dst in plan_moves(staging, target):
                replace_path(src, dst)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            replace_path(staging, target)
        return count
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def walk_tree(top: str, recursive: bool, prefix: str = "",
              skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, str]]:
    """Yield (path, name relative to top) under top, parents first, never following symlinks.

    Directories named (relative to top) in skip are left out with everything in them.
    """
    try:
        with os.scandir(top) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except FileNotFoundError:
        return  # removed while we walked
    for entry in entries:
        name = prefix + entry.name
        is_dir = entry.is_dir(follow_symlinks=False)
        if is_dir and name in skip:
            continue
        yield entry.path, name
        if recursive and is_dir:
            yield from walk_tree(entry.path, True, f"{name}/", skip)


def write_tgz(top: str, out: ChunkedStream) -> None:
    """Write a tar.gz of everything under top to out as it is produced."""
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as packed, \
            tarfile.open(fileobj=packed, mode="w|") as tar:
        for path, name in walk_tree(top, recursive=True):
            with contextlib.suppress(FileNotFoundError):  # removed while we walked
                tar.add(path, arcname=name, recursive=False)


def describe_entry(path: str, name: str, digest: bool) -> dict[str, object]:
    """Describe one directory entry for /ls (links are not followed)."""
    info = os.lstat(path)
    entry: dict[str, object] = {
        "name": name,
        "size": info.st_size,
        "mode": f"{stat.S_IMODE(info.st_mode):04o}",
        "mtime": info.st_mtime,
        "is_dir": stat.S_ISDIR(info.st_mode),
    }
    if stat.S_ISLNK(info.st_mode):
        entry["link"] = os.readlink(path)
    elif digest and stat.S_ISREG(info.st_mode):
        sha = hashlib.sha256()
        with open(path, "rb") as source:
            for block in iter(partial(source.read, CHUNK), b""):
                sha.update(block)
        entry["sha256"] = sha.hexdigest()
    return entry


def go_mode_string(mode: int) -> str:
    """An lstat mode written as Go's ``os.FileMode.String`` writes it, e.g. ``drwxr-xr-x``.

    Go puts a letter per type or special bit (``d`` dir, ``L`` link, ``D`` device, ``p`` pipe,
    ``S`` socket, ``u`` setuid, ``g`` setgid, ``c`` character device, ``t`` sticky, in that
    order; ``-`` for none) before the nine permission letters.
    """
    letters = [(stat.S_ISDIR(mode), "d"), (stat.S_ISLNK(mode), "L"),
               (stat.S_ISBLK(mode) or stat.S_ISCHR(mode), "D"), (stat.S_ISFIFO(mode), "p"),
               (stat.S_ISSOCK(mode), "S"), (bool(mode & stat.S_ISUID), "u"),
               (bool(mode & stat.S_ISGID), "g"), (stat.S_ISCHR(mode), "c"),
               (bool(mode & stat.S_ISVTX), "t")]
    kinds = "".join(letter for present, letter in letters if present) or "-"
    return kinds + "".join(letter if mode & (0o400 >> i) else "-"
                           for i, letter in enumerate("rwxrwxrwx"))


def go_ls_line(path: str, name: str, digest: bool) -> bytes:
    """One line of /ls in Go's format (links are not followed).

    Mode, tab, name (``/`` after a directory's); for a regular file also tab, size, tab,
    modification time (RFC 3339, UTC, whole seconds) and with digest tab, SHA-1.
    """
    info = os.lstat(path)
    line = f"{go_mode_string(info.st_mode)}\t{name}"
    if stat.S_ISREG(info.st_mode):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.st_mtime_ns // 10**9))
        line += f"\t{info.st_size}\t{when}"
        if digest:
            sha = hashlib.sha1()  # Go's protocol names SHA-1 (a digest, not a signature)
            with open(path, "rb") as source:
                for block in iter(partial(source.read, CHUNK), b""):
                    sha.update(block)
            line += f"\t{sha.hexdigest()}"
    elif stat.S_ISDIR(info.st_mode):
        line += "/"
    return (line + "\n").encode("utf-8", "surrogateescape")


def remove_path(path: str) -> bool:
    """Remove a file, link or tree; return whether there was anything to remove."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(mode):
        os.unlink(path)
        return True
    for dirpath, _, _ in os.walk(path):  # read-only dirs, like Go's module cache, block rmtree
        with contextlib.suppress(OSError):
            os.chmod(dirpath, stat.S_IMODE(os.lstat(dirpath).st_mode) | stat.S_IRWXU)
    shutil.rmtree(path)
    return True


def remove_path_or_entries(path: str, keep: bool) -> bool:
    """Remove path, or with keep only what is in it; return whether anything was removed."""
    if not keep:
        return remove_path(path)
    return any([remove_path(os.path.join(path, name)) for name in os.listdir(path)])


def write_atomically(source: io.BufferedIOBase, dest: str, mode: int) -> int:
    """Stream source into dest through a temporary file and a rename; return the size."""
    fd, temp = tempfile.mkstemp(prefix=".buildlet-write-", dir=os.path.dirname(dest))
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK)
            size = out.tell()
        os.chmod(temp, mode)
        os.replace(temp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return size


# --- HTTP ------------------------------------------------------------------------------------


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
        lines: list[bytes] = []
        for path, name in walk:
            with contextlib.suppress(FileNotFoundError):  # removed while we walked
                lines.append(go_ls_line(path, name, digest))
            if sum(map(len, lines)) >= CHUNK:
                stream.write(b"".join(lines))
                lines.clear()
        stream.write(b"".join(lines))
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


# --- Pre-started worker ----------------------------------------------------------------------

PRESTART_SOCKET_ENV = "FARM_PRESTARTED_WORKER"
# Run by --prestart-worker PYTHON in its own session, with the socket path and the agent's pid:
# listens on the unix socket at once (a client that comes during the imports waits for them),
# imports buildbot-worker, then serves one hand-off: a JSON line {"env", "cwd", "code"},
# answered "OK" (or "REFUSED why"); then the connection becomes its stdout and stderr and it
# runs code (the worker). Once the agent, or after the hand-off the client, is gone, it kills
# its process group: nothing outlives the buildlet.
PRESTART_SCRIPT = """\
import json, os, shutil, signal, socket, sys, threading, time
path, agent_pid = sys.argv[1], int(sys.argv[2])
# Held while a file is made in the socket directory, and by end() for good: so end() never
# removes the directory while the main thread is adding to it (which would leave it behind).
files = threading.Lock()
def end():
    files.acquire()
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    os.killpg(0, signal.SIGKILL)
def watch_agent():
    while os.getppid() == agent_pid:
        time.sleep(0.5)
    end()
threading.Thread(target=watch_agent, daemon=True).start()
listener = socket.socket(socket.AF_UNIX)
with files:
    listener.bind(path)
listener.listen(1)
import buildbot_worker.bot, buildbot_worker.scripts.runner, buildbot_worker.scripts.start
import buildbot_worker.scripts.create_worker, twisted.scripts.twistd
with files:
    open(path + ".ready", "w").close()
conn, _ = listener.accept()
listener.close()
with files:
    os.rename(path + ".ready", path + ".taken")
line = b""
while not line.endswith(b"\\n"):
    data = conn.recv(65536)
    if not data:
        sys.exit("prestarted worker: the client hung up before sending its request")
    line += data
try:
    request = json.loads(line)
    os.chdir(request["cwd"])
    code = compile(request["code"], "<worker bootstrap>", "exec")
    env = {str(k): str(v) for k, v in request["env"].items()}
except Exception as exc:
    conn.sendall(f"REFUSED {exc!r}\\n".encode())
    sys.exit(f"prestarted worker: refused the hand-off: {exc!r}")
conn.sendall(b"OK\\n")
os.environ.update(env)
def watch_client():
    while conn.recv(65536):
        pass
    end()
threading.Thread(target=watch_client, daemon=True).start()
os.dup2(conn.fileno(), 1)
os.dup2(conn.fileno(), 2)
exec(code, {"__name__": "__main__"})
"""


class PrestartedWorker:
    """A process that has imported buildbot-worker and waits, on a unix socket, to become one.

    Its state in ``/status``: ``starting`` (importing), ``waiting``, ``handed off``, or
    ``exited CODE``. Execs find the socket's path in ``FARM_PRESTARTED_WORKER``.
    """

    def __init__(self, python: str) -> None:
        self.python = python
        self._dir = tempfile.mkdtemp(prefix="farm-worker-")
        self.socket_path = os.path.join(self._dir, "hand-off.sock")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (its stderr is the agent's); SetupError if it cannot start."""
        try:
            self._proc = subprocess.Popen(
                [self.python, "-c", PRESTART_SCRIPT, self.socket_path, str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self.stop()
            raise SetupError(f"--prestart-worker {self.python!r} cannot start: "
                             f"{exc.strerror or exc}") from None
        os.environ[PRESTART_SOCKET_ENV] = self.socket_path

    def state(self) -> str:
        """Where the process is: starting, waiting, handed off, or exited CODE."""
        code = None if self._proc is None else self._proc.poll()
        if code is not None:
            return f"exited {code}"
        if os.path.exists(self.socket_path + ".taken"):
            return "handed off"
        return "waiting" if os.path.exists(self.socket_path + ".ready") else "starting"

    def stop(self) -> None:
        """Kill the process's group (the worker it became, too) and remove its socket."""
        if self._proc is not None:
            kill_group(self._proc)
            self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


# --- Lease deadline --------------------------------------------------------------------------

MAX_DEADLINE = 366 * 24 * 3600.0
# The agent's exit code once it halted at its deadline (EX_TEMPFAIL): whoever started it can
# then remove what the agent itself could not (a sandbox's mount points, a root-owned home).
DEADLINE_EXIT = 75


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
        print("buildlet_agent: no coordinator renewed the lease by its deadline; halting and "
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


# --- Preemption ------------------------------------------------------------------------------


class MetadataError(Exception):
    """A metadata service that did not answer, or answered something unreadable: no verdict."""


class Detector:
    """Tells whether this host is being preempted; ``check`` returns the reason, or None.

    ``check`` raises MetadataError when it cannot tell; that is never taken as a preemption.
    """

    name = "detector"

    def check(self) -> str | None:
        """The reason this host is being preempted, or None while it is not."""
        raise NotImplementedError


class SignalDetector(Detector):
    """Preempted once the agent receives ``signum`` (what a spot VM's shutdown hook sends).

    ``install`` must run in the main thread, before the agent serves; ``wake`` is called
    when the signal comes, so that the watch asks at once.
    """

    name = "signal"

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self._received = threading.Event()

    def install(self, wake: Callable[[], object]) -> None:
        """Catch the signal from now on."""

        def received(*_: object) -> None:
            self._received.set()
            wake()

        signal.signal(self.signum, received)

    def check(self) -> str | None:
        """The signal's name once it came, else None."""
        if self._received.is_set():
            return f"received {signal.Signals(self.signum).name}"
        return None


class HttpDetector(Detector):
    """A detector asking a metadata service at ``base_url`` over HTTP (never through a proxy)."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def fetch(self, method: str, path: str, headers: dict[str, str],
              missing_ok: bool = False) -> bytes | None:
        """The body of a 200 answer; None for a 404 when ``missing_ok``; else MetadataError."""
        url = self.base_url + path
        request = urllib.request.Request(url, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return bytes(response.read(MAX_FORM_BYTES))
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            raise MetadataError(f"{method} {url} answered HTTP {exc.code}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise MetadataError(f"{method} {url} failed: {exc}") from None

    def fetch_json(self, method: str, path: str, headers: dict[str, str],
                   missing_ok: bool = False) -> dict[str, object] | None:
        """Like ``fetch``, the body read as a JSON object."""
        body = self.fetch(method, path, headers, missing_ok)
        if body is None:
            return None
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise MetadataError(f"{self.base_url}{path} answered {body[:80]!r}, not a JSON object")
        return answer


class GCEDetector(HttpDetector):
    """GCE: ``instance/preempted`` answers TRUE once the VM is being preempted."""

    name = "gce"
    PATH = "/computeMetadata/v1/instance/preempted"

    def check(self) -> str | None:
        """The reason when the flag is TRUE, None when FALSE."""
        body = self.fetch("GET", self.PATH, {"Metadata-Flavor": "Google"}) or b""
        flag = body.strip().upper()
        if flag == b"FALSE":
            return None
        if flag == b"TRUE":
            return "GCE metadata says instance/preempted is TRUE"
        raise MetadataError(f"{self.base_url}{self.PATH} answered {body[:80]!r}, not TRUE/FALSE")


class AWSDetector(HttpDetector):
    """AWS spot: ``spot/instance-action`` exists once the instance is to be stopped (IMDSv2)."""

    name = "aws"
    TOKEN_PATH = "/latest/api/token"
    ACTION_PATH = "/latest/meta-data/spot/instance-action"
    TOKEN_TTL = "300"

    def check(self) -> str | None:
        """The notice's action and time when there is one, None on 404."""
        token = self.fetch("PUT", self.TOKEN_PATH,
                           {"X-aws-ec2-metadata-token-ttl-seconds": self.TOKEN_TTL}) or b""
        notice = self.fetch_json("GET", self.ACTION_PATH,
                                 {"X-aws-ec2-metadata-token": token.decode("ascii", "replace")},
                                 missing_ok=True)
        if notice is None:
            return None
        action, when = notice.get("action"), notice.get("time")
        if action not in ("terminate", "stop", "hibernate") or not isinstance(when, str):
            raise MetadataError(f"{self.base_url}{self.ACTION_PATH} answered {notice!r}, "
                                "not an action (terminate, stop, hibernate) and a time")
        return f"AWS spot instance-action: {action} at {when}"


class AzureDetector(HttpDetector):
    """Azure: a scheduled event of type ``Preempt`` means this spot VM is being evicted."""

    name = "azure"
    PATH = "/metadata/scheduledevents?api-version=2020-07-01"

    def check(self) -> str | None:
        """The Preempt event's id and NotBefore time when there is one, else None."""
        answer = self.fetch_json("GET", self.PATH, {"Metadata": "true"}) or {}
        events = answer.get("Events")
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise MetadataError(f"{self.base_url}{self.PATH} answered {answer!r}, "
                                "without a list of Events")
        for event in events:
            if event.get("EventType") == "Preempt":
                return (f"Azure scheduled event {event.get('EventId')}: Preempt, "
                        f"not before {event.get('NotBefore') or 'now'}")
        return None


class PreemptionWatch:
    """Asks ``detector`` every ``interval`` seconds, in a thread, until it reports preemption.

    ``notice`` is None until then, and the detector's verdict afterwards (it never goes back).
    Failures to ask are logged when they start, change or stop, and never count as notice.
    """

    def __init__(self, detector: Detector, interval: float,
                 log: Callable[[str], object] = print) -> None:
        self.detector = detector
        self.interval = interval
        self.notice: dict[str, object] | None = None
        self._log = log
        self._stopped = threading.Event()
        self._woken = threading.Event()
        self._last_failure: str | None = None

    def start(self) -> None:
        """Start watching in a daemon thread."""
        threading.Thread(target=self._run, name="preemption-watch", daemon=True).start()

    def stop(self) -> None:
        """Stop watching."""
        self._stopped.set()
        self._woken.set()

    def wake(self) -> None:
        """Ask now rather than at the end of the interval."""
        self._woken.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            if self.poll():
                return
            self._woken.wait(self.interval)
            self._woken.clear()

    def poll(self) -> bool:
        """Ask the detector once; True when the host is (now) known to be preempted."""
        try:
            reason = self.detector.check()
        except MetadataError as exc:
            if str(exc) != self._last_failure:
                self._log(f"buildlet_agent: preemption check ({self.detector.name}) failed, "
                          f"not taken as a preemption; still polling: {exc}")
            self._last_failure = str(exc)
            return False
        if self._last_failure is not None:
            self._log(f"buildlet_agent: preemption check ({self.detector.name}) answers again")
            self._last_failure = None
        if reason is None:
            return False
        self.notice = {"detector": self.detector.name, "reason": reason, "at": time.time()}
        self._log(f"buildlet_agent: PREEMPTED ({self.detector.name}): {reason}")
        return True


DETECTORS = {"gce": GCEDetector, "aws": AWSDetector, "azure": AzureDetector}


def make_watch(kind: str | None, url: str | None, signal_name: str,
               interval: float) -> PreemptionWatch | None:
    """The watch the --preemption options describe (None without one); SetupError if wrong."""
    if kind is None:
        return None
    if interval <= 0:
        raise SetupError(f"--preemption-interval must be > 0 seconds, not {interval:g}")
    detector: Detector
    if kind == "signal":
        try:
            signum = signal.Signals[signal_name.upper()]
        except KeyError:
            raise SetupError(f"--preemption-signal {signal_name!r} is not a signal name "
                             "such as SIGUSR1") from None
        detector = SignalDetector(signum)
    else:
        if not url or not url.startswith(("http://", "https://")):
            raise SetupError(f"--preemption {kind} needs --preemption-url, the metadata "
                             "service's base URL, e.g. http://169.254.169.254")
        detector = DETECTORS[kind](url)
    return PreemptionWatch(detector, interval, partial(print, file=sys.stderr, flush=True))


# --- Command line ----------------------------------------------------------------------------


def parse_listen(value: str) -> tuple[str, int]:
    """Parse HOST:PORT (IPv6 hosts in brackets); port 0 picks a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SetupError(f"--listen {value!r} is not HOST:PORT, e.g. 127.0.0.1:0")
    return host.strip("[]") or "0.0.0.0", int(port)


def load_secret(path: str | None, env_name: str | None) -> bytes:
    """Read the shared secret from a file or an environment variable, stripped."""
    if path is not None:
        try:
            with open(path, "rb") as source:
                secret = source.read().strip()
        except OSError as exc:
            raise SetupError(f"cannot read the secret file {path}: {exc.strerror}") from None
        where = f"file {path}"
    else:
        secret = os.environ.get(env_name or "", "").strip().encode("utf-8", "surrogateescape")
        where = f"environment variable {env_name}"
    if not secret:
        raise SetupError(f"the secret in {where} is empty or missing; the agent needs one")
    return secret


PR_SET_NO_NEW_PRIVS = 38  # from <linux/prctl.h>


def drop_privileges(user: str) -> None:
    """Become ``user`` for good: its groups, gid and uid, then no-new-privileges (Linux).

    A no-op when the agent already runs as ``user``; SetupError when the user does not exist
    or the agent is neither root nor that user.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SetupError(f"--run-as {user!r}: there is no such user; create it "
                         f"(useradd --system {user})") from None
    if os.geteuid() == entry.pw_uid:
        return
    if os.geteuid() != 0:
        raise SetupError(f"--run-as {user!r} needs the agent to start as root; it runs as "
                         f"uid {os.geteuid()}")
    os.initgroups(user, entry.pw_gid)
    os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
    os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    if sys.platform.startswith("linux"):
        import ctypes  # only here: a Python built without ctypes still runs the agent elsewhere

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise SetupError(f"cannot set no-new-privileges: {os.strerror(ctypes.get_errno())}")


def announce(url: str, ready_file: str | None) -> None:
    """Tell the provider the agent is listening: a stdout line and, if asked, a file."""
    if ready_file:
        temp = f"{ready_file}.{os.getpid()}.tmp"
        with open(temp, "w", encoding="utf-8") as out:
            out.write(url)
        os.replace(temp, ready_file)
    print(f"BUILDLET-READY {url}", flush=True)


def start(argv: list[str] | None) -> tuple[BuildletServer, str | None]:
    """Parse the command line and bind the server; return it and the --ready-file."""
    parser = argparse.ArgumentParser(description="Serve the buildlet protocol for a workdir.")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="port 0 picks one")
    parser.add_argument("--workdir", required=True, help="created if missing")
    secret = parser.add_mutually_exclusive_group(required=True)
    secret.add_argument("--secret-file", help="file holding the shared secret")
    secret.add_argument("--secret-env", metavar="NAME", help="environment variable holding it")
    parser.add_argument("--ready-file", help="also write the URL here once listening")
    parser.add_argument("--preemption", choices=("signal", *DETECTORS),
                        help="watch for this host's preemption and report it in /status")
    parser.add_argument("--preemption-url", metavar="URL",
                        help="base URL of the metadata service (gce, aws, azure)")
    parser.add_argument("--preemption-signal", default="SIGUSR1", metavar="NAME",
                        help="the signal that announces preemption (signal; default SIGUSR1)")
    parser.add_argument("--preemption-interval", type=float, default=5.0, metavar="SECONDS",
                        help="how often to ask the metadata service (default 5)")
    parser.add_argument("--run-as", metavar="USER",
                        help="started as root, become USER once the secret is read and the "
                             "port bound")
    parser.add_argument("--prestart-worker", metavar="PYTHON",
                        help="keep a PYTHON process with buildbot-worker imported, waiting to "
                             "become a worker (FarmLatentWorker hands it its configuration)")
    parser.add_argument("--exec-grace", type=float, default=EXEC_GRACE, metavar="SECONDS",
                        help="how long an exec whose client went away keeps running, waiting "
                             f"for the client to re-attach (default {EXEC_GRACE:g}; 0 kills it "
                             "at once)")
    parser.add_argument("--exec-keep", type=float, default=EXEC_KEEP, metavar="SECONDS",
                        help="how long an ended exec's output and status are kept for a "
                             f"re-attach (default {EXEC_KEEP:g})")
    parser.add_argument("--exec-spool", type=int, default=EXEC_SPOOL, metavar="BYTES",
                        help="how much of each exec's latest output is kept for a re-attach "
                             f"(default {EXEC_SPOOL}); older output is dropped")
    parser.add_argument("--deadline", type=float, metavar="SECONDS",
                        help="halt and remove the workdir unless a coordinator sets a new "
                             "deadline (POST /deadline) within SECONDS; default: none until set")
    parser.add_argument("--owned-path", action="append", default=[], metavar="PATH",
                        help="also remove PATH when the agent halts at its deadline (repeatable)")
    args = parser.parse_args(argv)
    if args.exec_grace < 0 or args.exec_keep < 0 or args.exec_spool < 1:
        raise SetupError("--exec-grace and --exec-keep must be >= 0 seconds and --exec-spool "
                         ">= 1 byte")
    if args.deadline is not None and not 0 < args.deadline <= MAX_DEADLINE:
        raise SetupError(f"--deadline must be > 0 and <= {MAX_DEADLINE:g} seconds, "
                         f"not {args.deadline:g}")
    address = parse_listen(args.listen)
    key = load_secret(args.secret_file, args.secret_env)
    watch = make_watch(args.preemption, args.preemption_url, args.preemption_signal,
                       args.preemption_interval)
    os.makedirs(args.workdir, exist_ok=True)
    server = BuildletServer(address, Workdir(args.workdir), key)
    server.execs = ExecRegistry(args.exec_grace, args.exec_keep, args.exec_spool)
    server.preemption = watch
    if args.run_as:
        try:
            drop_privileges(args.run_as)
        except (SetupError, OSError):
            server.server_close()
            raise
    server.deadline.owned += [os.path.abspath(path) for path in args.owned_path]
    if args.deadline is not None:
        server.deadline.set(args.deadline)
    if args.prestart_worker:
        server.prestarted = PrestartedWorker(args.prestart_worker)
        try:
            server.prestarted.start()
        except SetupError:
            server.server_close()
            raise
    return server, args.ready_file


def main(argv: list[str] | None = None) -> int:
    """Run the agent until /halt, SIGTERM or SIGINT; return the exit code."""
    try:
        server, ready_file = start(argv)
    except (SetupError, OSError) as exc:
        print(f"buildlet_agent: {exc}", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop_soon())
    if server.preemption is not None:
        if isinstance(server.preemption.detector, SignalDetector):
            server.preemption.detector.install(server.preemption.wake)
        server.preemption.start()
    try:
        announce(server.url, ready_file)
    except OSError as exc:
        print(f"buildlet_agent: cannot write the --ready-file: {exc}", file=sys.stderr)
        if server.prestarted is not None:
            server.prestarted.stop()
        server.server_close()
        return 2
    server.deadline.start()
    try:
        server.serve_forever(poll_interval=POLL_INTERVAL)
    finally:
        if server.preemption is not None:
            server.preemption.stop()
        server.processes.kill_all()
        if server.prestarted is not None:
            server.prestarted.stop()
        server.server_close()
        if server.deadline.expired:
            server.deadline.remove_owned()
    return DEADLINE_EXIT if server.deadline.expired else 0


if __name__ == "__main__":
    sys.exit(main())
