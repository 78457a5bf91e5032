"""The agent's command line: ``farm-remote.pyz agent --listen ... --workdir ... --secret-...``."""

from __future__ import annotations

import argparse
import os
import pwd
import signal
import sys

from buildbot_farm.remote.environment import REMOTE_ENV
from buildbot_farm.remote.errors import SetupError
from buildbot_farm.remote.paths import Workdir
from buildbot_farm.remote.preemption import DETECTORS, SignalDetector, make_watch
from buildbot_farm.remote.prestart import PrestartedWorker
from buildbot_farm.remote.protocol import (
    DEADLINE_EXIT,
    EXEC_GRACE,
    EXEC_KEEP,
    EXEC_SPOOL,
    MAX_DEADLINE,
    READY_PREFIX,
)
from buildbot_farm.remote.runs import POLL_INTERVAL, ExecRegistry
from buildbot_farm.remote.server import BuildletServer


def parse_listen(value: str) -> tuple[str, int]:
    """Parse HOST:PORT (IPv6 hosts in brackets); port 0 picks a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SetupError(f"--listen {value!r} is not HOST:PORT, e.g. 127.0.0.1:0")
    return host.strip("[]") or "0.0.0.0", int(port)


def load_secret(path: str | None, env_name: str | None) -> bytes:
    """Read the shared secret from a file or an environment variable, stripped."""
    if path is not None:
        try:
            with open(path, "rb") as source:
                secret = source.read().strip()
        except OSError as exc:
            raise SetupError(f"cannot read the secret file {path}: {exc.strerror}") from None
        where = f"file {path}"
    else:
        secret = os.environ.get(env_name or "", "").strip().encode("utf-8", "surrogateescape")
        where = f"environment variable {env_name}"
    if not secret:
        raise SetupError(f"the secret in {where} is empty or missing; the agent needs one")
    return secret


PR_SET_NO_NEW_PRIVS = 38  # from <linux/prctl.h>


def drop_privileges(user: str) -> None:
    """Become ``user`` for good: its groups, gid and uid, then no-new-privileges (Linux).

    A no-op when the agent already runs as ``user``; SetupError when the user does not exist
    or the agent is neither root nor that user.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise SetupError(f"--run-as {user!r}: there is no such user; create it "
                         f"(useradd --system {user})") from None
    if os.geteuid() == entry.pw_uid:
        return
    if os.geteuid() != 0:
        raise SetupError(f"--run-as {user!r} needs the agent to start as root; it runs as "
                         f"uid {os.geteuid()}")
    os.initgroups(user, entry.pw_gid)
    os.setresgid(entry.pw_gid, entry.pw_gid, entry.pw_gid)
    os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    if sys.platform.startswith("linux"):
        import ctypes  # only here: a Python built without ctypes still runs the agent elsewhere

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise SetupError(f"cannot set no-new-privileges: {os.strerror(ctypes.get_errno())}")


def announce(url: str, ready_file: str | None) -> None:
    """Tell the provider the agent is listening: a stdout line and, if asked, a file."""
    if ready_file:
        temp = f"{ready_file}.{os.getpid()}.tmp"
        with open(temp, "w", encoding="utf-8") as out:
            out.write(url)
        os.replace(temp, ready_file)
    print(f"{READY_PREFIX} {url}", flush=True)


def start(argv: list[str] | None) -> tuple[BuildletServer, str | None]:
    """Parse the command line and bind the server; return it and the --ready-file."""
    parser = argparse.ArgumentParser(description="Serve the buildlet protocol for a workdir.")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="port 0 picks one")
    parser.add_argument("--workdir", required=True, help="created if missing")
    secret = parser.add_mutually_exclusive_group(required=True)
    secret.add_argument("--secret-file", help="file holding the shared secret")
    secret.add_argument("--secret-env", metavar="NAME", help="environment variable holding it")
    parser.add_argument("--ready-file", help="also write the URL here once listening")
    parser.add_argument("--preemption", choices=("signal", *DETECTORS),
                        help="watch for this host's preemption and report it in /status")
    parser.add_argument("--preemption-url", metavar="URL",
                        help="base URL of the metadata service (gce, aws, azure)")
    parser.add_argument("--preemption-signal", default="SIGUSR1", metavar="NAME",
                        help="the signal that announces preemption (signal; default SIGUSR1)")
    parser.add_argument("--preemption-interval", type=float, default=5.0, metavar="SECONDS",
                        help="how often to ask the metadata service (default 5)")
    parser.add_argument("--run-as", metavar="USER",
                        help="started as root, become USER once the secret is read and the "
                             "port bound")
    parser.add_argument("--prestart-worker", metavar="PYTHON",
                        help="keep a PYTHON process with buildbot-worker imported, waiting to "
                             "become a worker (FarmLatentWorker hands it its configuration)")
    parser.add_argument("--exec-grace", type=float, default=EXEC_GRACE, metavar="SECONDS",
                        help="how long an exec whose client went away keeps running, waiting "
                             f"for the client to re-attach (default {EXEC_GRACE:g}; 0 kills it "
                             "at once)")
    parser.add_argument("--exec-keep", type=float, default=EXEC_KEEP, metavar="SECONDS",
                        help="how long an ended exec's output and status are kept for a "
                             f"re-attach (default {EXEC_KEEP:g})")
    parser.add_argument("--exec-spool", type=int, default=EXEC_SPOOL, metavar="BYTES",
                        help="how much of each exec's latest output is kept for a re-attach "
                             f"(default {EXEC_SPOOL}); older output is dropped")
    parser.add_argument("--deadline", type=float, metavar="SECONDS",
                        help="halt and remove the workdir unless a coordinator sets a new "
                             "deadline (POST /deadline) within SECONDS; default: none until set")
    parser.add_argument("--owned-path", action="append", default=[], metavar="PATH",
                        help="also remove PATH when the agent halts at its deadline (repeatable)")
    args = parser.parse_args(argv)
    if args.exec_grace < 0 or args.exec_keep < 0 or args.exec_spool < 1:
        raise SetupError("--exec-grace and --exec-keep must be >= 0 seconds and --exec-spool "
                         ">= 1 byte")
    if args.deadline is not None and not 0 < args.deadline <= MAX_DEADLINE:
        raise SetupError(f"--deadline must be > 0 and <= {MAX_DEADLINE:g} seconds, "
                         f"not {args.deadline:g}")
    address = parse_listen(args.listen)
    key = load_secret(args.secret_file, args.secret_env)
    watch = make_watch(args.preemption, args.preemption_url, args.preemption_signal,
                       args.preemption_interval)
    os.makedirs(args.workdir, exist_ok=True)
    server = BuildletServer(address, Workdir(args.workdir), key)
    server.execs = ExecRegistry(args.exec_grace, args.exec_keep, args.exec_spool)
    server.preemption = watch
    if args.run_as:
        try:
            drop_privileges(args.run_as)
        except (SetupError, OSError):
            server.server_close()
            raise
    server.deadline.owned += [os.path.abspath(path) for path in args.owned_path]
    if args.deadline is not None:
        server.deadline.set(args.deadline)
    if args.prestart_worker:
        archive = os.environ.get(REMOTE_ENV)
        if archive is None:
            server.server_close()
            raise SetupError("--prestart-worker needs the agent run from farm-remote.pyz "
                             "(python3 farm-remote.pyz agent ...)")
        server.prestarted = PrestartedWorker(args.prestart_worker, archive)
        try:
            server.prestarted.start()
        except SetupError:
            server.server_close()
            raise
    return server, args.ready_file


def main(argv: list[str] | None = None) -> int:
    """Run the agent until /halt, SIGTERM or SIGINT; return the exit code."""
    try:
        server, ready_file = start(argv)
    except (SetupError, OSError) as exc:
        print(f"farm-remote agent: {exc}", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop_soon())
    if server.preemption is not None:
        if isinstance(server.preemption.detector, SignalDetector):
            server.preemption.detector.install(server.preemption.wake)
        server.preemption.start()
    try:
        announce(server.url, ready_file)
    except OSError as exc:
        print(f"farm-remote agent: cannot write the --ready-file: {exc}", file=sys.stderr)
        if server.prestarted is not None:
            server.prestarted.stop()
        server.server_close()
        return 2
    server.deadline.start()
    try:
        server.serve_forever(poll_interval=POLL_INTERVAL)
    finally:
        if server.preemption is not None:
            server.preemption.stop()
        server.processes.kill_all()
        if server.prestarted is not None:
            server.prestarted.stop()
        server.server_close()
        if server.deadline.expired:
            server.deadline.remove_owned()
    return DEADLINE_EXIT if server.deadline.expired else 0


if __name__ == "__main__":
    sys.exit(main())
