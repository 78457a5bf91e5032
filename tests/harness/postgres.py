"""Throwaway PostgreSQL clusters, run from the server binaries Debian installs."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import psycopg2
from psycopg2 import sql

from .ports import free_port

SERVER_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = "run `sudo tests/harness/install-system-packages.sh`, which installs it"
TIMEOUT = 30.0
_HOST = "127.0.0.1"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be found or started; the message says why and what to do."""


def server_bindir() -> Path:
    """Return the ``bin`` directory of the newest PostgreSQL server under /usr/lib/postgresql."""
    found = [binary.parent for binary in SERVER_ROOT.glob("*/bin/postgres")]
    if not found:
        raise PostgresUnavailable(f"no PostgreSQL server in {SERVER_ROOT}/*/bin: {INSTALL_HINT}")
    return max(found, key=lambda bindir: [int(p) for p in bindir.parent.name.split(".")])


class PostgresCluster:
    """A throwaway PostgreSQL cluster in ``basedir``: trust auth, 127.0.0.1 only, fsync off.

    Life: ``start()``, then any number of ``kill()`` / ``restart()``, then ``stop()``, which
    deletes ``basedir``. As root the server runs as the ``postgres`` user, which then owns
    ``basedir`` and must be able to reach it (``/tmp/...`` works, a 0700 parent does not).
    """

    def __init__(self, basedir: Path) -> None:
        self.basedir = basedir
        self._datadir = basedir / "data"
        self._socketdir = basedir / "socket"
        self._logfile = basedir / "server.log"
        self._bindir: Path | None = None
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        """The libpq URL of the cluster's ``postgres`` database; set by ``start()``."""
        return self._dsn_for("postgres")

    def start(self) -> str:
        """Create the cluster, start the server and return its DSN once it accepts connections."""
        if self._port is not None:
            raise RuntimeError(f"PostgresCluster in {self.basedir} was already started")
        self._bindir = server_bindir()
        self._socketdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._hand_to_postgres_user()
        initdb = subprocess.run(
            self._command(
                "initdb",
                "-D",
                str(self._datadir),
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ),
            cwd=self.basedir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if initdb.returncode != 0:
            raise PostgresUnavailable(
                f"initdb failed in {self._datadir} (exit {initdb.returncode}):\n"
                f"{initdb.stdout}{initdb.stderr}"
            )
        self._port = free_port(_HOST)
        self._serve()
        return self.dsn

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would, and wait until the cluster is gone."""
        process = self._running_process()
        postmaster = int((self._datadir / "postmaster.pid").read_text().split()[0])
        children = _children_of(postmaster)
        os.kill(postmaster, signal.SIGKILL)
        process.wait(timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while self._port_accepts() or any(_alive(pid) for pid in children):
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL in {self.basedir} outlived SIGKILL by {TIMEOUT} s")
            time.sleep(0.05)
        self._process = None

    def restart(self) -> None:
        """Start the server again on the same port and data directory, and wait until it answers.

        After ``kill()`` this runs crash recovery; on a running server it first shuts it
        down cleanly (fast mode), so clients see an administrator's restart.
        """
        if self._port is None:
            raise RuntimeError(f"PostgresCluster in {self.basedir}: restart() before start()")
        self._shut_down()
        self._serve()

    def stop(self) -> None:
        """Shut the server down (fast mode) if it runs, then delete ``basedir``."""
        self._shut_down()
        self._port = None
        if self.basedir.exists():
            shutil.rmtree(self.basedir)

    def create_database(self, name: str) -> str:
        """Create an empty database called ``name`` and return its DSN."""
        connection = psycopg2.connect(self.dsn)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            connection.close()
        return self._dsn_for(name)

    def _dsn_for(self, database: str) -> str:
        if self._port is None:
            raise RuntimeError(f"PostgresCluster in {self.basedir} is not started")
        return f"postgresql://postgres@{_HOST}:{self._port}/{quote(database, safe='')}"

    def _command(self, program: str, *args: str) -> list[str]:
        assert self._bindir is not None
        command = [str(self._bindir / program), *args]
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    def _hand_to_postgres_user(self) -> None:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(f"no `postgres` system user: {INSTALL_HINT}") from None
        for path in (self.basedir, self._socketdir):
            os.chown(path, user.pw_uid, user.pw_gid)
        reach = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-w", str(self.basedir)], check=False
        )
        if reach.returncode != 0:
            raise PostgresUnavailable(
                f"the postgres user cannot write to {self.basedir}: put the cluster in a"
                " directory every user can enter, such as one made by tempfile.mkdtemp()"
            )

    def _serve(self) -> None:
        """Launch the postmaster and wait until psycopg2 can connect to it."""
        with self._logfile.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(
                    "postgres",
                    "-D",
                    str(self._datadir),
                    "-c",
                    f"listen_addresses={_HOST}",
                    "-c",
                    f"port={self._port}",
                    "-c",
                    f"unix_socket_directories={self._socketdir}",
                    "-c",
                    "fsync=off",
                ),
                cwd=self.basedir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + TIMEOUT
        while True:
            status = self._process.poll()
            if status is not None:
                raise PostgresUnavailable(
                    f"PostgreSQL in {self.basedir} exited with status {status} while starting;"
                    f" last lines of {self._logfile}:\n{self._log_tail()}"
                )
            try:
                psycopg2.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg2.OperationalError as error:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(
                        f"PostgreSQL in {self.basedir} did not accept connections within"
                        f" {TIMEOUT:.0f} s ({error}); last lines of {self._logfile}:\n"
                        f"{self._log_tail()}"
                    ) from error
            time.sleep(0.1)

    def _shut_down(self) -> None:
        if self._process is None or self._process.poll() is not None:
            self._process = None
            return
        pg_ctl = subprocess.run(
            self._command("pg_ctl", "stop", "-D", str(self._datadir), "-m", "fast", "-w"),
            cwd=self.basedir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if pg_ctl.returncode != 0:
            raise RuntimeError(
                f"pg_ctl stop failed for {self._datadir}:\n{pg_ctl.stdout}{pg_ctl.stderr}"
            )
        self._process.wait(timeout=TIMEOUT)
        self._process = None

    def _running_process(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            raise RuntimeError(f"PostgreSQL in {self.basedir} is not running")
        return self._process

    def _port_accepts(self) -> bool:
        assert self._port is not None
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(1)
            return probe.connect_ex((_HOST, self._port)) == 0

    def _log_tail(self, lines: int = 20) -> str:
        text = self._logfile.read_text(errors="replace") if self._logfile.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _children_of(parent: int) -> list[int]:
    """Return the PIDs whose parent is ``parent``, read from /proc."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    """Tell whether ``pid`` is a running process (exited zombies, never reaped here, are not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
