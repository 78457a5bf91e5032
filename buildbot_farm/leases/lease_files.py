"""``buildbot-farm lease`` commands that move files: put, get, puttar, gettar, ls and rm."""

from __future__ import annotations

import argparse
import posixpath
import stat
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from buildbot_farm.leases import transfers

if TYPE_CHECKING:
    from buildbot_farm.leases.client import CoordinatorClient


class LeaseCommandError(Exception):
    """A problem the user can fix, reported as one ``buildbot-farm: ...`` line."""


async def put(client: CoordinatorClient, args: argparse.Namespace) -> int:
    """``lease put NAME FILE [DEST]``: copy a local file into the workdir, keeping its mode."""
    source = Path(args.file)
    info = source.stat()
    if not stat.S_ISREG(info.st_mode):
        raise LeaseCommandError(f"{source} is not a regular file; send a directory with puttar")
    dest = args.dest or source.name
    if dest.endswith("/"):
        dest += source.name
    mode = info.st_mode & 0o777 if args.mode is None else octal_mode(args.mode)
    with transfers.Progress(f"put {dest}", sys.stderr, info.st_size) as progress, \
            transfers.ProgressFile(source, progress.advance) as body:
        await client.put_file(args.name, body, dest, mode)
    return 0


def octal_mode(text: str) -> int:
    """``--mode`` as permission bits; LeaseCommandError unless it is octal 0-0777."""
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise LeaseCommandError(f"--mode {text!r} is not an octal permission such as 0644")
    return mode


async def get(client: CoordinatorClient, args: argparse.Namespace) -> int:
    """``lease get NAME PATH [DEST]``: copy a file of the workdir here."""
    name = posixpath.basename(posixpath.normpath(args.path))
    if name in (".", "..", "/"):
        raise LeaseCommandError(f"{args.path!r} names no file; give a file's path in the workdir")
    local = Path(args.dest) if args.dest else Path(name)
    if local.is_dir():
        local = local / name
    with transfers.Progress(f"get {args.path}", sys.stderr) as progress, \
            transfers.new_file(local) as out:

        def sink(data: bytes) -> None:
            out.write(data)
            progress.advance(len(data))

        await client.get_stream_sized(
            args.name, "/read", {"path": args.path}, sink, progress.set_total
        )
    return 0


async def puttar(client: CoordinatorClient, args: argparse.Namespace) -> int:
    """``lease puttar NAME DIR [DEST]``: copy a local directory's contents into the workdir."""
    source = Path(args.dir)
    if not source.is_dir():
        raise LeaseCommandError(f"{source} is not a directory; send a file with put")
    dest = args.dest if args.dest is not None else source.resolve().name
    with tempfile.TemporaryDirectory(prefix="buildbot-farm-") as scratch:
        archive = Path(scratch) / "upload.tgz"
        with open(archive, "wb") as out:
            transfers.pack_tgz(source, out)
        size = archive.stat().st_size
        with transfers.Progress(f"puttar {dest or '.'}", sys.stderr, size) as progress, \
                transfers.ProgressFile(archive, progress.advance) as body:
            await client.put_tgz(args.name, body, dest)
    return 0


async def gettar(client: CoordinatorClient, args: argparse.Namespace) -> int:
    """``lease gettar NAME DIR [DEST]``: copy a directory of the workdir here."""
    base = posixpath.basename(posixpath.normpath(args.dir))
    local = Path(args.dest or (base if base not in (".", "..", "/") else args.name))
    transfers.check_free(local)
    with transfers.staging_beside(local) as scratch, \
            transfers.Progress(f"gettar {args.dir}", sys.stderr) as progress:
        archive = scratch / "download.tgz"
        with open(archive, "xb") as out:

            def sink(data: bytes) -> None:
                out.write(data)
                progress.advance(len(data))

            await client.get_stream_sized(
                args.name, "/tgz", {"dir": args.dir}, sink, progress.set_total
            )
        transfers.unpack_tgz(archive, local)
    return 0


async def ls(client: CoordinatorClient, args: argparse.Namespace) -> int:
    """``lease ls NAME [DIR]``: list the workdir like ``ls -l``, recursively."""
    for entry in await client.ls(args.name, args.dir, digest=args.digest):
        print(ls_line(entry))
    return 0


def ls_line(entry: Mapping[str, Any]) -> str:
    """One ``ls -l``-like line for an entry of the agent's ``/ls``."""
    kind = stat.S_IFDIR if entry["is_dir"] else stat.S_IFLNK if "link" in entry else stat.S_IFREG
    mode = stat.filemode(kind | int(entry["mode"], 8))
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["mtime"]))
    digest = f" {entry['sha256']}" if "sha256" in entry else ""
    name = entry["name"] + ("/" if entry["is_dir"] else "")
    link = f" -> {entry['link']}" if "link" in entry else ""
    return f"{mode} {entry['size']:>10} {when}{digest} {name}{link}"


async def rm(client: CoordinatorClient, args: argparse.Namespace) -> int:
    """``lease rm NAME PATH...``: remove files or trees from the workdir."""
    await client.remove(args.name, args.paths)
    return 0
