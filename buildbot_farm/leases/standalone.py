"""``buildbot-farm coordinator``: the coordinator alone, on its own port, for several masters.

    buildbot-farm coordinator --db-url postgresql://farm@db/farm --listen 127.0.0.1:8011 \\
        --secret-file /etc/farm/secret --state-dir /var/lib/farm \\
        --pool local=process:max=4,warm=1 --pool deb=docker:image=builder:bookworm,max=8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.python import log
from twisted.web import server

from buildbot_farm import db
from buildbot_farm.leases.config import BuildletPool, FarmCoordinator
from buildbot_farm.leases.runtime import LeaseRuntime

_NUMBERS = {"max": ("max_count", int), "warm": ("warm", int), "cpus": ("cpus", float),
            "pids": ("pids", int)}
_TEXTS = {"image": "image", "memory": "memory"}


def parse_pool(spec: str) -> BuildletPool:
    """``NAME=PROVIDER[:key=value,...]`` (keys: max, warm, image, cpus, memory, pids)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--pool {spec!r}: write NAME=PROVIDER[:max=4,warm=1]")
    provider, _, options = rest.partition(":")
    fields: dict[str, Any] = {}
    for option in filter(None, options.split(",")):
        key, sep, value = option.partition("=")
        if key in _NUMBERS:
            field, kind = _NUMBERS[key]
            try:
                fields[field] = kind(value)
            except ValueError:
                message = f"--pool {spec!r}: {key} is not a number"
                raise argparse.ArgumentTypeError(message) from None
        elif key in _TEXTS and sep:
            fields[_TEXTS[key]] = value
        else:
            raise argparse.ArgumentTypeError(
                f"--pool {spec!r}: unknown option {key!r} (max, warm, image, cpus, memory, pids)"
            )
    return BuildletPool(name, provider=provider, **fields)


def add_coordinator_command(commands: Any) -> None:
    """Add ``buildbot-farm coordinator`` to the CLI's subcommands."""
    parser = commands.add_parser("coordinator", help="run a buildlet coordinator on its own port")
    parser.add_argument("--db-url", required=True, help="the farm database (sqlite or postgresql)")
    parser.add_argument("--listen", default="127.0.0.1:8011", help="HOST:PORT to serve on")
    parser.add_argument(
        "--secret-file", required=True, type=Path, help="users' keys derive from it"
    )
    parser.add_argument("--state-dir", required=True, type=Path, help="process buildlets live here")
    parser.add_argument("--pool", action="append", type=parse_pool, required=True,
                        help="NAME=PROVIDER[:max=4,warm=1,image=...] (repeatable)")
    parser.add_argument("--idle-timeout", type=float, default=30 * 60)
    parser.add_argument("--max-lifetime", type=float, default=12 * 60 * 60)
    parser.add_argument("--sweep-interval", type=float, default=30.0)
    parser.add_argument(
        "--on-stop", choices=("keep", "halt"), default="keep",
        help="at stop, keep the buildlets for the next start to re-adopt (default), or halt them",
    )
    parser.set_defaults(handler=run_coordinator)


def run_coordinator(args: argparse.Namespace) -> int:
    """Serve until interrupted; exit 2 with a message when it cannot start."""
    try:
        secret = args.secret_file.read_text().strip()
    except OSError as e:
        print(f"buildbot-farm: cannot read --secret-file: {e}", file=sys.stderr)
        return 2
    settings = FarmCoordinator(
        secret=secret, pools=tuple(args.pool), idle_timeout=args.idle_timeout,
        max_lifetime=args.max_lifetime, sweep_interval=args.sweep_interval,
        on_stop=args.on_stop,
    )
    problems = settings.problems()
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        problems.append(f"--listen {args.listen!r} is not HOST:PORT")
    if problems:
        for problem in problems:
            print(f"buildbot-farm: {problem}", file=sys.stderr)
        return 2
    outcome = {"exit": 0}

    async def serve(reactor: Any) -> None:
        try:
            database = await db.connect(args.db_url, reactor)
        except db.DatabaseError as e:
            print(f"buildbot-farm: {e}", file=sys.stderr)
            outcome["exit"] = 2
            return
        log.startLogging(sys.stderr, setStdout=False)
        runtime = await LeaseRuntime.start(
            settings, database, reactor, args.state_dir, owner=f"standalone:{args.state_dir}"
        )
        listening = reactor.listenTCP(int(port), server.Site(runtime.resource), interface=host)
        print(f"COORDINATOR-READY http://{host}:{listening.getHost().port}", flush=True)
        sweeper = runtime.sweeper(reactor)
        sweeper.start(now=False)
        stopped: defer.Deferred[None] = defer.Deferred()
        reactor.addSystemEventTrigger("before", "shutdown", lambda: stopped.callback(None))
        await stopped
        await sweeper.stop()
        await runtime.stop()
        await database.stop()

    task.react(lambda reactor: defer.ensureDeferred(serve(reactor)))
    return outcome["exit"]
