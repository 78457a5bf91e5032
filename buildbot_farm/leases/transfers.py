"""The local ends of ``buildbot-farm lease`` transfers: progress, packing and safe unpacking.

Archives are unpacked with the buildlet agent's own extraction, so the client refuses exactly
what a buildlet refuses: absolute names, ``..``, links leading out, and special files.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Callable, TextIO

from buildbot_farm.remote.archives import extract_tgz

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
BAR_WIDTH = 24


def human_size(count: float) -> str:
    """``count`` bytes in binary units, such as ``512 B`` or ``1.5 MiB``."""
    unit = UNITS[0]
    for unit in UNITS:
        if count < 1024 or unit == UNITS[-1]:
            break
        count /= 1024
    return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"


class Progress:
    """Bytes moved so far: a live bar on a terminal, else one plain line at the end.

    Use it as a context manager: the final line is written only if the block succeeds; on a
    failure a live bar is ended with a newline so that the error starts a line of its own.
    """

    def __init__(
        self,
        label: str,
        stream: TextIO,
        total: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.1,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream
        self._live = stream.isatty()
        self._clock = clock
        self._interval = interval
        self._started = clock()
        self._drawn_at: float | None = None

    def set_total(self, total: int | None) -> None:
        """Set the size once it is known (None: unknown, so no bar, just bytes and rate)."""
        self.total = total

    def advance(self, count: int) -> None:
        """Count ``count`` more bytes; redraw the bar if it is live and due."""
        self.done += count
        now = self._clock()
        if self._live and (self._drawn_at is None or now - self._drawn_at >= self._interval):
            self._drawn_at = now
            self._stream.write(f"\r{self.describe(now)}\x1b[K")
            self._stream.flush()

    def describe(self, now: float) -> str:
        """The bar's text: ``label: [###---] 50% 1.0 MiB / 2.0 MiB 4.0 MiB/s``."""
        rate = human_size(self.done / max(now - self._started, 1e-3))
        if self.total is None:
            return f"{self.label}: {human_size(self.done)} {rate}/s"
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = round(fraction * BAR_WIDTH)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        return (
            f"{self.label}: [{bar}] {fraction:4.0%} "
            f"{human_size(self.done)} / {human_size(self.total)} {rate}/s"
        )

    def summary(self, now: float) -> str:
        """The final line: ``label: 2.0 MiB in 0.5 s (4.0 MiB/s)``."""
        elapsed = now - self._started
        rate = human_size(self.done / max(elapsed, 1e-3))
        return f"{self.label}: {human_size(self.done)} in {elapsed:.1f} s ({rate}/s)"

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            line = self.summary(self._clock())
            self._stream.write(f"\r{line}\x1b[K\n" if self._live else f"{line}\n")
        elif self._drawn_at is not None:
            self._stream.write("\n")
        self._stream.flush()


class ProgressFile(io.BufferedReader):
    """A file opened for reading that reports the size of each block read from it.

    treq streams a ``BufferedReader`` body block by block, so this counts an upload as it goes.
    """

    def __init__(self, path: Path, on_read: Callable[[int], object]) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self._on_read = on_read

    def read(self, size: int | None = -1, /) -> bytes:
        """Read as ``BufferedReader`` does, then report how much."""
        data = super().read(size)
        self._on_read(len(data))
        return data


def pack_tgz(directory: Path, out: IO[bytes]) -> None:
    """Write a tar.gz of everything under ``directory`` to ``out``, named relative to it.

    Symbolic links are stored as links, not followed.
    """
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for entry in sorted(directory.iterdir()):
            tar.add(entry, arcname=entry.name)


@contextmanager
def new_file(destination: Path) -> Iterator[IO[bytes]]:
    """Write ``destination`` through a temporary file beside it, renamed into place on success.

    Missing parent directories are created; on failure nothing is left behind.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.part")
    try:
        with open(temporary, "xb") as out:
            yield out
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def check_free(destination: Path) -> None:
    """Raise FileExistsError unless ``destination`` is absent or an empty directory."""
    if destination.is_dir() and not destination.is_symlink():
        if not any(destination.iterdir()):
            return
    elif not os.path.lexists(destination):
        return
    raise FileExistsError(
        errno.EEXIST, "exists and is not an empty directory; remove it or name another destination",
        str(destination),
    )


@contextmanager
def staging_beside(destination: Path) -> Iterator[Path]:
    """A scratch directory beside ``destination`` (so on its file system), removed afterwards."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".part",
                               dir=destination.parent)
    try:
        yield Path(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def unpack_tgz(archive: Path, destination: Path) -> int:
    """Unpack the tar.gz file ``archive`` as the directory ``destination``, all or nothing.

    ``destination`` must be absent or empty. An unsafe or corrupt archive raises the agent's
    ``ArchiveError`` with nothing written there. Returns the number of members unpacked.
    """
    check_free(destination)
    with staging_beside(destination) as scratch:
        tree = scratch / "tree"
        tree.mkdir()
        with open(archive, "rb") as source:
            count = extract_tgz(source, str(tree.resolve()))  # its checks compare real paths
        if destination.is_dir():
            destination.rmdir()
        tree.rename(destination)
    return count
