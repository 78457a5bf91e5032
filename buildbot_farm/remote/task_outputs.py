"""The ``$FARM_OUTPUTS`` file: ``KEY=VALUE`` lines a task writes to set build properties (pure).

A value spanning lines uses a delimiter, as GitHub Actions' step outputs do::

    version=1.2.3
    notes<<EOF
    first line
    second line
    EOF
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from buildbot_farm.remote.tar_stream import Data, TarReader

MAX_BYTES = 1 << 20
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class OutputsError(ValueError):
    """The outputs file is malformed; the message names the line."""


def parse_outputs(data: bytes) -> dict[str, str]:
    """Return the properties set by an outputs file's content (later lines win)."""
    if len(data) > MAX_BYTES:
        raise OutputsError(f"$FARM_OUTPUTS holds {len(data)} bytes; at most {MAX_BYTES} are read")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise OutputsError(f"$FARM_OUTPUTS is not UTF-8 text ({error})") from error
    found: dict[str, str] = {}
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        line = lines[number]
        number += 1
        if not line.strip():
            continue
        if "=" in line and ("<<" not in line or line.index("=") < line.index("<<")):
            key, _, value = line.partition("=")
        elif "<<" in line:
            key, _, delimiter = line.partition("<<")
            if not delimiter:
                raise OutputsError(f"$FARM_OUTPUTS line {number}: '<<' needs a delimiter after it")
            try:
                end = lines.index(delimiter, number)
            except ValueError:
                raise OutputsError(
                    f"$FARM_OUTPUTS line {number}: no line {delimiter!r} ends the value of {key!r}"
                ) from None
            value = "\n".join(lines[number:end])
            number = end + 1
        else:
            raise OutputsError(f"$FARM_OUTPUTS line {number}: expected KEY=VALUE, got {line!r}")
        if not _KEY.fullmatch(key):
            raise OutputsError(
                f"$FARM_OUTPUTS line {number}: {key!r} is not a property name (letters, digits,"
                " '_', '.', '-'; not starting with a digit)"
            )
        found[key] = value
    return found


def first_member_data(chunks: Iterable[bytes]) -> bytes:
    """The data of a tar stream's first member (the outputs file as the engine sends it),
    at most MAX_BYTES + 1 bytes of it: enough for :func:`parse_outputs` to refuse more."""
    reader = TarReader()
    data = bytearray()
    for chunk in chunks:
        for event in reader.feed(chunk):
            if isinstance(event, Data) and len(data) <= MAX_BYTES:
                data += event.chunk[: MAX_BYTES + 1 - len(data)]
    return bytes(data)
