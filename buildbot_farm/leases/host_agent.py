"""``buildbot-farm agent --register URL --type T``: a host joins a coordinator's reverse pool.

The host starts the buildlet agent with a fresh secret, registers it, and re-registers
every ``--heartbeat`` seconds (a heartbeat) while it waits to be leased and while it is
used. When the agent exits (its lease ended with /halt), the work directory is wiped and a
fresh agent registers again, so each lease starts clean. Ctrl-C stops the agent and leaves.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from buildbot_farm.private_dirs import remote_archive
from buildbot_farm.remote.protocol import READY_PREFIX


class RegistrationError(Exception):
    """The coordinator refused the host, or could not be reached."""


def add_agent_command(commands: Any) -> None:
    """Add ``buildbot-farm agent`` to the CLI's subcommands."""
    parser = commands.add_parser("agent", help="join a coordinator's reverse pool as a buildlet")
    parser.add_argument("--register", required=True, metavar="COORDINATOR_URL")
    parser.add_argument("--type", required=True, help="the reverse pool to join")
    parser.add_argument("--workdir", required=True, type=Path, help="wiped between leases")
    parser.add_argument("--listen", default="127.0.0.1:0", help="where the agent listens")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="seconds between renewals")
    parser.add_argument("--user", default=os.environ.get("FARM_USER"), help="or FARM_USER")
    parser.add_argument("--key", default=os.environ.get("FARM_KEY"), help="or FARM_KEY")
    parser.add_argument("--once", action="store_true", help="leave after the first lease ends")
    parser.set_defaults(handler=run_host_agent)


def run_host_agent(args: argparse.Namespace) -> int:
    """Serve leases until interrupted (or, with --once, until the first one ends)."""
    if not args.user or not args.key:
        print("buildbot-farm: give --user and --key (or FARM_USER and FARM_KEY)", file=sys.stderr)
        return 2
    try:
        while True:
            served = _serve_one_lease(args)
            if args.once or not served:
                return 0 if served else 2
    except KeyboardInterrupt:
        return 0


def _serve_one_lease(args: argparse.Namespace) -> bool:
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    secret = secrets.token_hex(32)
    # The secret goes in a private file the agent reads at start, never in the environment
    # its commands inherit; the file is gone once the agent has announced itself.
    fd, secret_file = tempfile.mkstemp(prefix="farm-buildlet-secret-")
    with os.fdopen(fd, "w") as out:
        out.write(secret)
    agent = subprocess.Popen(
        [sys.executable, str(remote_archive()), "agent", "--listen", args.listen,
         "--workdir", str(args.workdir), "--secret-file", secret_file],
        env=_passed_environment(), stdout=subprocess.PIPE, text=True,
    )
    try:
        assert agent.stdout is not None
        ready = agent.stdout.readline().split()
        os.unlink(secret_file)
        if len(ready) != 2 or ready[0] != READY_PREFIX:
            print("buildbot-farm: the buildlet agent did not start", file=sys.stderr)
            return False
        url = ready[1]
        while agent.poll() is None:
            try:
                lease = _register(args, url, secret)
                print(f"registered {url} as {lease['Name']}", flush=True)
            except RegistrationError as e:
                print(f"buildbot-farm: {e}", file=sys.stderr, flush=True)
            deadline = time.monotonic() + args.heartbeat
            while agent.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
        print("the lease ended; rejoining with a clean work directory", flush=True)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(secret_file)
        if agent.poll() is None:
            agent.terminate()
            agent.wait()


def _register(args: argparse.Namespace, url: str, secret: str) -> dict[str, Any]:
    body = urllib.parse.urlencode({"type": args.type, "url": url, "secret": secret}).encode()
    request = urllib.request.Request(
        args.register.rstrip("/") + "/buildlet/register", data=body, method="POST"
    )
    token = base64.b64encode(f"{args.user}:{args.key}".encode()).decode()
    request.add_unredirected_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["error"]
        raise RegistrationError(f"the coordinator refused the host ({e.code}): {detail}") from e
    except OSError as e:
        raise RegistrationError(f"cannot reach the coordinator at {args.register}: {e}") from e


# What a reverse host's agent, and so its lessees, get of the environment it was started in:
# never FARM_KEY (the host's coordinator key) or anything else of the person who started it.
PASSED_ENVIRONMENT = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TMPDIR", "SHELL")


def _passed_environment() -> dict[str, str]:
    return {name: os.environ[name] for name in PASSED_ENVIRONMENT if name in os.environ}
