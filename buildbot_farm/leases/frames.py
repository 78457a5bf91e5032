"""Decoding the agent's framed exec stream (pure logic).

A frame is one type byte, a 4-byte big-endian length, then the payload: ``o`` carries
command output, ``x`` the final JSON status ``{"exit_code", "signal", "state"}``.
"""

from __future__ import annotations

import json
import signal
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">cI")
MAX_FRAME = 16 * 1024 * 1024


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
        while len(self._buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise FrameError(f"frame of {length} bytes is larger than {MAX_FRAME}")
            if len(self._buffer) < HEADER.size + length:
                break
            payload = self._buffer[HEADER.size : HEADER.size + length]
            self._buffer = self._buffer[HEADER.size + length :]
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
