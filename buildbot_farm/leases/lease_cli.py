"""``buildbot-farm lease ...`` and ``buildbot-farm key``: a gomote-like client of the coordinator.

Settings: see ``lease_settings``. A failure prints one line ``buildbot-farm: ...`` on stderr and
exits 2; ``run`` exits with the remote command's status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TextIO

from buildbot_farm.leases import keys, lease_files
from buildbot_farm.leases.lease_files import LeaseCommandError
from buildbot_farm.leases.lease_settings import SETTINGS_HELP, LeaseSettingsError, load_settings

if TYPE_CHECKING:

    from buildbot_farm.leases.client import CoordinatorClient

ERRORS_HELP = """

errors: one line on stderr, exit status 2; run exits with the remote command's status."""
INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (SIGINT)
CREATE_TIMEOUT = 600.0  # seconds `lease create` waits in line for a full pool, by default
LeaseAction = Callable[["CoordinatorClient", argparse.Namespace], Awaitable[int]]


class PlaceInLine:
    """Shows a waiting create's place in line: redrawn on a terminal, else a line per change.

    Use it as a context manager: at the end, a redrawn line is erased.
    """

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self._stream = stream
        self._live = stream.isatty()
        self._shown: int | None = None
        self._drawn = False

    def show(self, ahead: int) -> None:
        """Say that ``ahead`` creates are ahead of this one (only when that changed)."""
        if ahead == self._shown:
            return
        self._shown = ahead
        place = "next in line" if ahead == 0 else f"{ahead} ahead of you in line"
        if self._live:
            self._stream.write(f"\r{self.label}: {place}\x1b[K")
            self._drawn = True
        else:
            self._stream.write(f"{self.label}: {place}\n")
        self._stream.flush()

    def __enter__(self) -> PlaceInLine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


# --- The commands: each runs in the reactor and returns the exit code ------------------------


async def _create(client: CoordinatorClient, args: argparse.Namespace) -> int:
    if args.timeout < 0:
        raise LeaseCommandError(f"--timeout {args.timeout:g}: give seconds >= 0")
    with PlaceInLine(f"waiting for a {args.type} buildlet", sys.stderr) as line:
        created = await client.create(args.type, wait=args.timeout, on_place=line.show)
    print(created["Name"])
    return 0


async def _list(client: CoordinatorClient, args: argparse.Namespace) -> int:
    buildlets = await client.buildlets()
    lost = await client.lost_buildlets()
    name_width = max((len(b["Name"]) for b in buildlets + lost), default=0)
    type_width = max((len(b["Type"]) for b in buildlets + lost), default=0)
    for b in buildlets:
        print(f"{b['Name']:<{name_width}}  {b['Type']:<{type_width}}  "
              f"created {b['Created']}  expires {b['Expires']}")
    for b in lost:
        print(f"{b['Name']:<{name_width}}  {b['Type']:<{type_width}}  "
              f"lost {b['Lost']}  lost with {b['Reason']}")
    return 0


async def _run(client: CoordinatorClient, args: argparse.Namespace) -> int:
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LeaseCommandError(f"--env {item!r} is not KEY=VALUE")
        env[key] = value
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    def notice(text: str) -> None:
        print(f"buildbot-farm: {text}", file=sys.stderr, flush=True)

    status = await client.exec(
        args.name, args.cmd, args.args, directory=args.dir, env=env, on_output=write,
        on_notice=notice,
    )
    if status.exit_code is None:
        print(f"buildbot-farm: the remote command did not exit normally: {status.state}",
              file=sys.stderr)
    return status.as_exit_code()


async def _ping(client: CoordinatorClient, args: argparse.Namespace) -> int:
    status = await client.status(args.name)
    print(f"{args.name}: alive, agent {status.get('agent_version')} (buildlet protocol "
          f"{status.get('Version')}) on {status.get('hostname')} "
          f"({status.get('os')}/{status.get('arch')}), {status.get('running')} command(s) running")
    return 0


async def _destroy(client: CoordinatorClient, args: argparse.Namespace) -> int:
    await client.destroy(args.name)
    return 0


# --- Running a command: settings, reactor, errors --------------------------------------------


def _fail(message: str) -> int:
    print(f"buildbot-farm: {message}", file=sys.stderr)
    return 2


def _describe(error: Exception) -> str | None:
    """One line for an error a user can hit, or None for what can only be a bug."""
    from twisted.web.client import ResponseFailed

    from buildbot_farm.leases.client import CoordinatorRequestError
    from buildbot_farm.remote.errors import ArchiveError
    from buildbot_farm.remote.protocol import FrameError

    if isinstance(error, ResponseFailed):
        reasons = "; ".join(reason.getErrorMessage() for reason in error.reasons)
        return f"the connection to the coordinator broke: {reasons}"
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror}"
    if isinstance(error, ArchiveError):
        return f"refused the archive, nothing was written: {error.message}"
    if isinstance(error, (LeaseCommandError, CoordinatorRequestError, FrameError, OSError)):
        return str(error)
    return None


def _react(action: LeaseAction, client: CoordinatorClient, args: argparse.Namespace) -> int:
    """Run ``action`` under ``task.react``; its exit code, or 2 after reporting its error."""
    from twisted.internet import defer, task

    exit_code = 2

    async def main() -> None:
        nonlocal exit_code
        try:
            exit_code = await action(client, args)
        except defer.CancelledError:
            _fail("interrupted")
            exit_code = INTERRUPTED
        except Exception as e:
            message = _describe(e)
            if message is None:
                traceback.print_exc()
                message = f"unexpected {type(e).__name__}: {e} (a bug: please report it)"
            exit_code = _fail(message)

    def start(reactor: Any) -> defer.Deferred[None]:
        finished = defer.ensureDeferred(main())

        def interrupted() -> defer.Deferred[None]:
            finished.cancel()
            return finished  # the reactor waits for the cleanups (e.g. killing a remote exec)

        # On Ctrl-C the reactor stops: cancel the command so that its cleanups still run.
        reactor.addSystemEventTrigger("before", "shutdown", interrupted)
        return finished

    with contextlib.suppress(SystemExit):  # react always exits; the code that counts is ours
        task.react(start)
    return exit_code


def _lease_command(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    from buildbot_farm.leases.client import CoordinatorClient
    from buildbot_farm.web.client import http_client

    try:
        settings = load_settings(args.config, os.environ)
    except LeaseSettingsError as e:
        return _fail(str(e))
    client = CoordinatorClient(
        settings.url, settings.user, settings.key, http_client(reactor), clock=reactor
    )
    return _react(args.lease_action, client, args)


def _key_command(args: argparse.Namespace) -> int:
    try:
        secret = Path(args.secret_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        return _fail(f"cannot read the secret file {args.secret_file}: {e}")
    if not secret:
        return _fail(f"the secret file {args.secret_file} is empty")
    try:
        print(keys.user_key(secret.encode(), args.user))
    except ValueError as e:
        return _fail(str(e))
    return 0


# --- The parser ------------------------------------------------------------------------------


def add_lease_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``lease`` (and its gomote-like commands) and ``key`` to ``buildbot-farm``'s parser."""
    config_help = "settings file (default: $XDG_CONFIG_HOME/buildbot-farm/lease.ini)"
    anywhere = argparse.ArgumentParser(add_help=False)
    anywhere.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=config_help)
    lease = subparsers.add_parser(
        "lease", help="lease buildlets from a coordinator and drive them (like gomote)",
        description="Lease buildlets from a farm coordinator and drive them.",
        epilog=SETTINGS_HELP + ERRORS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lease.add_argument("--config", metavar="FILE", help=config_help)
    actions = lease.add_subparsers(dest="lease_command", required=True, metavar="COMMAND")

    def action(name: str, function: LeaseAction, text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, parents=[anywhere], help=text, description=text)
        parser.set_defaults(handler=_lease_command, lease_action=function)
        return parser

    create = action("create", _create, "lease a buildlet of TYPE; print its name. When every "
                    "buildlet of TYPE is in use, wait in line (showing your place on stderr) "
                    "for the first one that frees up")
    create.add_argument("--timeout", type=float, default=CREATE_TIMEOUT, metavar="SECONDS",
                        help=f"give up after waiting this long (default: {CREATE_TIMEOUT:g}; "
                        "0: fail at once if the pool is full)")
    create.add_argument("type", metavar="TYPE")
    action("list", _list, "list your buildlets, and those lost with their hosts")

    run = action("run", _run, "run CMD on the buildlet, streaming its output; exit with its status")
    run.add_argument("--dir", help="directory in the workdir to run in (default: the workdir)")
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                     help="set an environment variable (repeatable)")
    run.add_argument("name", metavar="NAME")
    run.add_argument("cmd", metavar="CMD", help="a name on PATH, or a path in the workdir")
    run.add_argument("args", metavar="ARG", nargs=argparse.REMAINDER)

    put = action("put", lease_files.put,
                 "copy the local FILE to DEST in the workdir (default: its name)")
    put.add_argument("--mode", help="octal permissions (default: the local file's)")
    put.add_argument("name", metavar="NAME")
    put.add_argument("file", metavar="FILE")
    put.add_argument("dest", metavar="DEST", nargs="?")

    puttar = action("puttar", lease_files.puttar, "copy the local directory DIR's contents to "
                    "DEST in the workdir (default: DIR's name; '.' for the workdir itself)")
    puttar.add_argument("name", metavar="NAME")
    puttar.add_argument("dir", metavar="DIR")
    puttar.add_argument("dest", metavar="DEST", nargs="?")

    get = action("get", lease_files.get, "copy the file PATH of the workdir to the local DEST "
                 "(default: its name here)")
    get.add_argument("name", metavar="NAME")
    get.add_argument("path", metavar="PATH")
    get.add_argument("dest", metavar="DEST", nargs="?")

    gettar = action("gettar", lease_files.gettar, "copy the directory DIR of the workdir to the "
                    "local DEST, which must not exist or be empty (default: DIR's name here)")
    gettar.add_argument("name", metavar="NAME")
    gettar.add_argument("dir", metavar="DIR")
    gettar.add_argument("dest", metavar="DEST", nargs="?")

    ls = action("ls", lease_files.ls, "list DIR of the workdir, recursively (default: all of it)")
    ls.add_argument("--digest", action="store_true", help="show each file's sha256")
    ls.add_argument("name", metavar="NAME")
    ls.add_argument("dir", metavar="DIR", nargs="?", default="")

    rm = action("rm", lease_files.rm, "remove files or trees from the workdir")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("paths", metavar="PATH", nargs="+")

    action("ping", _ping, "check that the buildlet answers (this renews its lease)").add_argument(
        "name", metavar="NAME")
    action("destroy", _destroy, "end the lease and destroy the buildlet").add_argument(
        "name", metavar="NAME")

    key = subparsers.add_parser(
        "key", help="print a user's key (for the farm's admin)",
        description="Print the key of user-NAME under the coordinator's secret.",
    )
    key.add_argument("user", metavar="user-NAME")
    key.add_argument("--secret-file", required=True, metavar="FILE",
                     help="file holding the coordinator's secret (surrounding whitespace ignored)")
    key.set_defaults(handler=_key_command)
