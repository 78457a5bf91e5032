"""``buildbot-farm``: the farm's command line (subcommands grow with each capability)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from buildbot_farm import __version__
from buildbot_farm.example import (
    DEMO_SECRETS,
    EXAMPLE_CONFIG,
    WORKER_PASSWORD_SECRET,
    fill_secrets,
    write_example_config,
)
from buildbot_farm.images import add_image_command
from buildbot_farm.leases.host_agent import add_agent_command
from buildbot_farm.leases.lease_cli import add_lease_commands
from buildbot_farm.leases.reap import add_reap_command
from buildbot_farm.leases.standalone import add_coordinator_command
from buildbot_farm.master_api import add_force_command
from buildbot_farm.records.verify_cli import add_verify_command


def _db_command(args: argparse.Namespace) -> int:
    from twisted.internet import defer, task

    from buildbot_farm import db

    outcome = {"exit": 0}

    async def run(reactor: Any) -> None:
        try:
            url = db.parse_db_url(args.db_url)
            # status only looks: it never creates a SQLite file; migrate creates what is missing
            database = db.open_database(
                url.relative_to(args.basedir), reactor, create=args.action == "migrate"
            )
            await database.start()
        except db.NoDatabase as e:
            print(f"buildbot-farm: {e}; {_migrate_hint(args, url)} creates one", file=sys.stderr)
            outcome["exit"] = 2
            return
        except db.DatabaseError as e:
            print(f"buildbot-farm: {e}", file=sys.stderr)
            outcome["exit"] = 2
            return
        try:
            if args.action == "migrate":
                version = await db.migrate(database, now=reactor.seconds)
                print(f"{url.redacted()}: schema version {version}")
            else:
                await _print_schema(database)
        except db.NoDatabase as e:
            print(f"buildbot-farm: {e}; {_migrate_hint(args, url)} creates its tables",
                  file=sys.stderr)
            outcome["exit"] = 2
        except db.DatabaseError as e:
            print(f"buildbot-farm: {e}", file=sys.stderr)
            outcome["exit"] = 2
        finally:
            await database.stop()

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code:
            return int(e.code)
    return outcome["exit"]


def _migrate_hint(args: argparse.Namespace, url: Any) -> str:
    basedir = f" --basedir {args.basedir}" if args.basedir != "." else ""
    return f"`buildbot-farm db migrate {url.redacted()}{basedir}`"


async def _print_schema(database: Any) -> None:
    from buildbot_farm import db

    known = db.load_migrations(database.dialect.name)
    try:
        applied = await db.applied_migrations(database)
    except db.DatabaseUnavailable:
        raise
    except Exception as e:  # no version table: the backends word "no such table" differently
        raise db.NoDatabase(
            f"there is no farm database at {database.url.redacted()}: it has no"
            " farm_schema_version table"
        ) from e
    for version, name in applied:
        print(f"{version:04d} {name}")
    newest = known[-1].version if known else 0
    current = applied[-1][0] if applied else 0
    print(f"{database.url.redacted()}: at schema version {current}; this code knows {newest}")


def _demo_command(args: argparse.Namespace) -> int:
    from buildbot_farm.demo import LocalFarm
    from buildbot_farm.images import demo_image_env

    env = demo_image_env()
    if env is None:
        return 1
    config = args.config or EXAMPLE_CONFIG
    return LocalFarm(config=config, basedir=args.basedir, env=env).run(once=args.once)


def _example_config_command(args: argparse.Namespace) -> int:
    if args.path is None:
        sys.stdout.write(EXAMPLE_CONFIG.read_text())
        return 0
    try:
        write_example_config(Path(args.path), overwrite=args.force)
    except FileExistsError:
        print(
            f"buildbot-farm example-config: {args.path} exists; keep it, or give --force"
            " to replace it",
            file=sys.stderr,
        )
        return 1
    except OSError as e:
        print(f"buildbot-farm example-config: cannot write {args.path}: {e}", file=sys.stderr)
        return 1
    secrets_dir = Path(args.path).parent / "secrets"
    try:
        fill_secrets(secrets_dir, DEMO_SECRETS)
    except OSError as e:
        print(f"buildbot-farm example-config: cannot fill {secrets_dir}: {e}", file=sys.stderr)
        return 1
    print(f"wrote the example configuration to {args.path}")
    print(
        f"its secrets are files in {secrets_dir} (random values; existing files were kept);"
        f" the worker password is in {secrets_dir / WORKER_PASSWORD_SECRET}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``buildbot-farm`` with all its subcommands."""
    parser = argparse.ArgumentParser(
        prog="buildbot-farm", description="Tools for buildbot_farm, the Buildbot build farm."
    )
    parser.add_argument("--version", action="version", version=f"buildbot-farm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    database = commands.add_parser("db", help="inspect or upgrade a farm database")
    database.add_argument("action", choices=["status", "migrate"])
    database.add_argument("db_url", help="sqlite:///farm.sqlite or postgresql://user@host/db")
    database.add_argument(
        "--basedir", default=".", help="the master's basedir (relative SQLite paths start here)"
    )
    database.set_defaults(handler=_db_command)

    demo = commands.add_parser(
        "demo", help="create and start a master + worker, run the example build"
    )
    demo.add_argument(
        "--config",
        help="the master.cfg to use (default: the example that ships with the plugin,"
        " as printed by `buildbot-farm example-config`)",
    )
    demo.add_argument("--basedir", default=".demo", help="where the master and worker live")
    demo.add_argument("--once", action="store_true", help="stop after the build; exit 0 on success")
    demo.set_defaults(handler=_demo_command)

    example = commands.add_parser(
        "example-config",
        help="print the example master.cfg that ships with the plugin, or write it to PATH",
        description="The example master.cfg (farm service, leased builders, container task,"
        " artifacts, on-demand builds, build records, the Farm menu) that `buildbot-farm demo`"
        " runs. Without PATH it is printed on standard output.",
    )
    example.add_argument(
        "path",
        nargs="?",
        help="write it to this file (an existing file is kept unless --force), and fill the"
        " secrets directory it reads (secrets/ beside it) with random values where missing",
    )
    example.add_argument("--force", action="store_true", help="replace PATH if it exists")
    example.set_defaults(handler=_example_config_command)

    add_force_command(commands)
    add_coordinator_command(commands)
    add_image_command(commands)
    add_agent_command(commands)
    add_lease_commands(commands)
    add_reap_command(commands)
    add_verify_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``buildbot-farm`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
