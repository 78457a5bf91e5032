"""The execs an agent remembers: each one's output spool, status and following client.

A client whose connection dropped re-attaches to a run by its id (``/exec/attach``).
"""

from __future__ import annotations

import os
import secrets
import selectors
import socket
import subprocess
import tempfile
import threading
import time
from typing import Callable

from buildbot_farm.remote.bodies import CHUNK
from buildbot_farm.remote.errors import AgentError
from buildbot_farm.remote.execs import (
    ExecRequest,
    ExecResult,
    ProcessTable,
    client_hung_up,
    kill_group,
)
from buildbot_farm.remote.protocol import EXEC_GRACE, EXEC_KEEP, EXEC_SPOOL

MAX_KEPT_EXECS = 100  # ended execs kept at most (the oldest are forgotten first)
POLL_INTERVAL = 0.2
ORPHAN_GRACE = 5.0  # seconds to read on after a command exits, if something else holds its pipe


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

