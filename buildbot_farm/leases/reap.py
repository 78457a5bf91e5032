"""``buildbot-farm reap``: halt and forget the buildlets a stopped coordinator left running.

A master stopped with ``on_stop="keep"`` (the default) leaves its buildlets for the next
start to re-adopt. When it is not coming back, this destroys them from its farm database::

    buildbot-farm reap --db-url sqlite:///farm.sqlite --basedir /srv/master

Run it only while that coordinator is stopped: a running one would lose its leases.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from buildbot_farm import db
from buildbot_farm.leases.agent_client import AgentClient, AgentError
from buildbot_farm.leases.model import ExpiryPolicy, Lease
from buildbot_farm.leases.providers import DockerProvider, ProcessProvider, ProviderError
from buildbot_farm.leases.store import LeaseTable, coordinator_names
from buildbot_farm.web.client import http_client


class ReapError(Exception):
    """Nothing was reaped: the command was not told which coordinator's buildlets to reap."""


def add_reap_command(commands: Any) -> None:
    """Add ``buildbot-farm reap`` to the CLI's subcommands."""
    parser = commands.add_parser(
        "reap",
        help="halt the buildlets a stopped coordinator left running, and forget their leases",
        description="Destroys every buildlet (leased or idle) of a coordinator that is stopped"
        " for good, as on_stop='halt' would have: its agents are halted, process buildlets'"
        " directories and docker buildlets' containers removed, the leases forgotten.",
    )
    parser.add_argument("--db-url", default="sqlite:///farm.sqlite",
                        help="the farm database (default: sqlite:///farm.sqlite)")
    parser.add_argument("--basedir", default=".",
                        help="the master's basedir (relative SQLite paths start here)")
    parser.add_argument("--coordinator", help="whose buildlets: the master's name for an "
                        "embedded coordinator; needed when the database has several")
    parser.add_argument("--docker-host", help="the Docker engine of docker buildlets "
                        "(default: DOCKER_HOST, else the local socket)")
    parser.set_defaults(handler=run_reap)


def run_reap(args: argparse.Namespace) -> int:
    """Reap and print what was reaped; exit 2 with a message when nothing could be done."""
    from twisted.internet import defer, task

    outcome = {"exit": 0}

    async def run(reactor: Any) -> None:
        try:
            database = await db.connect(args.db_url, reactor, basedir=args.basedir)
        except db.DatabaseError as e:
            print(f"buildbot-farm reap: {e}", file=sys.stderr)
            outcome["exit"] = 2
            return
        try:
            for line in await reap(database, reactor, args.coordinator, args.docker_host):
                print(line)
        except ReapError as e:
            print(f"buildbot-farm reap: {e}", file=sys.stderr)
            outcome["exit"] = 2
        finally:
            await database.stop()

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    return outcome["exit"]


async def reap(
    database: db.Database, reactor: Any, coordinator: str | None, docker_host: str | None
) -> list[str]:
    """Destroy the buildlets of ``coordinator`` (the only one in ``database`` if None)."""
    names = await coordinator_names(database)
    if coordinator is None:
        if len(names) > 1:
            raise ReapError(
                f"the database has buildlets of several coordinators ({', '.join(names)}); "
                "name one with --coordinator"
            )
        if not names:
            return ["no buildlets to reap"]
        coordinator = names[0]
    table = LeaseTable(database, coordinator, ExpiryPolicy())
    kinds = await table.provider_kinds()
    agents = AgentClient(http_client(reactor, persistent=False))
    reaped = []
    for lease in await table.all():
        await table.mark_halting(lease.name)
        problem = await _destroy(lease, kinds.get(lease.name, ""), agents, reactor, docker_host)
        await table.remove(lease.name)
        reaped.append(f"reaped {lease.name} ({lease.state.value}){problem}")
    return reaped or [f"coordinator {coordinator} has no buildlets to reap"]


async def _destroy(
    lease: Lease, kind: str, agents: AgentClient, reactor: Any, docker_host: str | None
) -> str:
    """Halt the agent, then have its provider remove what is left; say what went wrong."""
    if lease.url:
        # An agent already gone is removed by its provider below all the same.
        with contextlib.suppress(AgentError):
            await agents.halt(lease.url, lease.secret)
    if not lease.handle:
        return ""
    try:
        if kind == "process":
            home = Path(json.loads(lease.handle)["dir"])
            await ProcessProvider(home.parent, reactor).destroy(lease.handle)
        elif kind == "docker":
            await DockerProvider("", reactor, docker_host=docker_host).destroy(lease.handle)
    except ProviderError as e:
        return f"; removing it failed: {e}"
    return ""
