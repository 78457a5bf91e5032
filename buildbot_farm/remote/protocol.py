"""The buildlet protocol: what the agent serves and the master speaks (both sides import this).

The agent is started (from ``farm-remote.pyz``, see :mod:`buildbot_farm.remote`) as::

    python3 farm-remote.pyz agent --listen HOST:PORT --workdir DIR --secret-file FILE

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

import json
import signal
import struct
from dataclasses import dataclass

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
# The line the agent prints once it listens: this, a space and its base URL.
READY_PREFIX = "BUILDLET-READY"
EXEC_GRACE = 120.0  # seconds an exec whose client went away waits for one to re-attach
EXEC_KEEP = 300.0  # seconds an ended exec's output and status are kept for a re-attach
EXEC_SPOOL = 64 * 1024 * 1024  # bytes of each exec's latest output kept for a re-attach
MAX_DEADLINE = 366 * 24 * 3600.0  # the longest lease deadline an agent accepts, in seconds
# The agent's exit code once it halted at its deadline (EX_TEMPFAIL): whoever started it can
# then remove what the agent itself could not (a sandbox's mount points, a root-owned home).
DEADLINE_EXIT = 75
FRAME_HEADER = struct.Struct(">cI")
MAX_FRAME = 16 * 1024 * 1024


def frame(kind: bytes, payload: bytes) -> bytes:
    """Encode one frame of an application/x-buildlet-frames body."""
    return FRAME_HEADER.pack(kind, len(payload)) + payload


class FrameError(Exception):
    """The stream is not a valid frame sequence (truncated, oversized or unknown frames)."""


@dataclass(frozen=True)
class ExitStatus:
    """How a remote command ended: ``exit_code`` (None if signalled or never started)."""

    exit_code: int | None
    signal: str | None
    state: str

    @property
    def ok(self) -> bool:
        """Whether the command exited 0."""
        return self.exit_code == 0

    def as_exit_code(self) -> int:
        """A shell-style exit code: the code, 128+N for signal N, 255 if it never ran."""
        if self.exit_code is not None:
            return self.exit_code
        if self.signal and self.signal in signal.Signals.__members__:
            return 128 + signal.Signals[self.signal].value
        return 255


class FrameDecoder:
    """Feed it bytes as they arrive; it returns output chunks and, at the end, the status."""

    def __init__(self) -> None:
        self._buffer = b""
        self.status: ExitStatus | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the output payloads that are now complete."""
        self._buffer += data
        output = []
        while len(self._buffer) >= FRAME_HEADER.size:
            kind, length = FRAME_HEADER.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise FrameError(f"frame of {length} bytes is larger than {MAX_FRAME}")
            if len(self._buffer) < FRAME_HEADER.size + length:
                break
            payload = self._buffer[FRAME_HEADER.size : FRAME_HEADER.size + length]
            self._buffer = self._buffer[FRAME_HEADER.size + length :]
            if kind == b"o":
                output.append(payload)
            elif kind == b"x":
                self.status = _status(payload)
            else:
                raise FrameError(f"unknown frame type {kind!r}")
        return output

    def finish(self) -> ExitStatus:
        """The status once the stream has ended; FrameError if it ended early."""
        if self._buffer or self.status is None:
            raise FrameError(
                "the command's output stream ended before its exit status: the buildlet "
                "or the connection to it went away"
            )
        return self.status


def _status(payload: bytes) -> ExitStatus:
    try:
        fields = json.loads(payload)
        return ExitStatus(
            exit_code=fields.get("exit_code"),
            signal=fields.get("signal"),
            state=str(fields.get("state", "")),
        )
    except (ValueError, AttributeError) as e:
        raise FrameError(f"the exit status frame is not JSON: {payload[:100]!r}") from e
