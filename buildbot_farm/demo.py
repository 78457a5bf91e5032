"""A real master and worker on this machine (``LocalFarm``), and ``buildbot-farm demo`` on it.

Creates ``BASEDIR/master`` from a master.cfg (the packaged example configuration by default)
with its secrets directory ``BASEDIR/master/secrets`` (random values, kept across runs) and
``BASEDIR/worker``, starts both, forces the example build through Buildbot's REST API,
waits for it and prints its result, the farm's status and the web UI address.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from buildbot_farm.example import DEMO_SECRETS, WORKER_PASSWORD_SECRET, fill_secrets
from buildbot_farm.leases.buildlet_user import ensure_buildlet_user
from buildbot_farm.leases.providers import ProcessProvider
from buildbot_farm.leases.providers.isolation import farm_buildlets_dir
from buildbot_farm.master_api import MasterAPI, MasterAPIError

WORKER_NAME = "local-worker"
DEMO_BUILDERS = ("hello-farm", "hello-buildlet")
# How long the master may take to start, and the worker to connect (``buildbot`` and
# ``buildbot-worker`` give up after 10 s, too short for a busy machine).
START_TIMEOUT = 120.0


class LocalFarmError(MasterAPIError):
    """The local master or worker could not run; the message says what failed and where to look."""


class LocalFarm(MasterAPI):
    """A real master and one local worker under ``basedir``, run as daemons.

    The master's configuration is the file ``config``; it must read its ports from
    ``FARM_WEB_PORT`` and ``FARM_PB_PORT``, and its worker password from
    ``FARM_WORKER_PASSWORD`` or the secret ``worker-password``, as the packaged example
    (:data:`buildbot_farm.example.EXAMPLE_CONFIG`) does, and name its worker ``local-worker``.
    ``create`` fills the master's secrets directory (``secrets_dir``, for
    ``util.SecretInAFile``) with ``DEMO_SECRETS``: the worker's password, and random values
    for the others unless their files exist. Builds are forced through :class:`MasterAPI`.
    ``env`` adds to (or overrides) the environment the master and worker run with; ports not
    given there come from this process's environment (8010 and 9989 by default); the
    worker's password is ``FARM_WORKER_PASSWORD`` or a random one. Run as root, ``create``
    makes the unprivileged user ``farm-buildlet`` (if missing) and names it in
    ``FARM_BUILDLET_USER``, which the example gives its process pool as ``run_as``; run by
    anyone else, buildlets run as that user (in bubblewrap where it is installed). The
    master's directory is made private (0700). Tests use this class to run real builds.
    """

    def __init__(
        self,
        config: str | Path,
        basedir: str | Path,
        env: dict[str, str] | None = None,
        build_timeout: float = 600.0,
    ) -> None:
        self.config = Path(config).resolve()
        self.basedir = Path(basedir).resolve()
        self.master_dir = self.basedir / "master"
        self.secrets_dir = self.master_dir / "secrets"
        self.worker_dir = self.basedir / "worker"
        self.extra_env = dict(env or {})
        merged = {**os.environ, **self.extra_env}
        self.web_port = int(merged.get("FARM_WEB_PORT", "8010"))
        self.pb_port = int(merged.get("FARM_PB_PORT", "9989"))
        self.password = merged.get("FARM_WORKER_PASSWORD") or secrets.token_hex(24)
        super().__init__(
            f"http://127.0.0.1:{self.web_port}/",
            build_timeout,
            hint=f"; see {self.master_log}",
            prefix="demo: ",
        )
        self._bin = Path(sys.executable).parent
        self.buildlet_user = merged.get("FARM_BUILDLET_USER") or ensure_buildlet_user()

    def run(self, once: bool) -> int:
        """Set up, start, build; with ``once``, stop and return 0 only for a green build."""
        try:
            self.create()
            self.start()
            results = [
                self.report(self.force_build(builder, reason="buildbot-farm demo"))
                for builder in DEMO_BUILDERS
            ]
            self.show_farm_status()
            self.show_record()
            self.show_on_demand()
        except MasterAPIError as e:
            print(f"demo: {e}", file=sys.stderr)
            self.stop()
            return 1
        if once:
            self.stop()
            return 0 if all(result == 0 for result in results) else 1
        print(f"\nThe farm is running. Web UI: {self.web_url}  Farm dashboard:"
              f" {self.web_url}#/farm  (Ctrl-C stops it)")
        try:
            signal.pause() if hasattr(signal, "pause") else time.sleep(10**9)
        except KeyboardInterrupt:
            print()
        finally:
            self.stop()
        return 0

    def create(self) -> None:
        """Create (or refresh) the master from the config and a fresh local worker."""
        if not self.config.is_file():
            raise LocalFarmError(f"no master configuration at {self.config}")
        self.basedir.mkdir(parents=True, exist_ok=True)
        self._run([self._bin / "buildbot", "create-master", "-r", str(self.master_dir)])
        self.master_dir.chmod(0o700)
        shutil.copyfile(self.config, self.master_dir / "master.cfg")
        fill_secrets(self.secrets_dir, DEMO_SECRETS, {WORKER_PASSWORD_SECRET: self.password})
        shutil.rmtree(self.worker_dir, ignore_errors=True)
        self._run(
            [
                self._bin / "buildbot-worker",
                "create-worker",
                str(self.worker_dir),
                f"127.0.0.1:{self.pb_port}",
                WORKER_NAME,
                self.password,
            ]
        )
        info = self.worker_dir / "info"
        (info / "arch").write_text(platform.machine() + "\n")
        (info / "python").write_text(platform.python_version() + "\n")
        print(f"demo: master in {self.master_dir} (secrets in {self.secrets_dir}),"
              f" worker in {self.worker_dir}")
        if self.buildlet_user is None:
            print("demo: not root, so no farm-buildlet user: buildlets run as you (in"
                  " bubblewrap if it is installed, which hides the master's files)")

    def start(self) -> None:
        """Start the master (waits until it runs) and the worker (waits until it connects)."""
        self.start_master()
        self._run([self._bin / "buildbot-worker", "start", "--quiet", str(self.worker_dir)])
        self.wait_for_worker()
        print(f"demo: master and worker started; web UI at {self.web_url}")

    def start_master(self) -> None:
        """Start the master alone (waits until it runs), e.g. again after it was killed."""
        self._run(
            [self._bin / "buildbot", "start", "--start_timeout", f"{START_TIMEOUT:g}",
             str(self.master_dir)],
            log=self.master_log,
        )

    def wait_for_worker(self) -> None:
        """Wait until the local worker is connected to the master (``START_TIMEOUT``)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = self.api(f"workers/{WORKER_NAME}")["workers"]
            if found and found[0]["connected_to"]:
                return
            time.sleep(0.2)
        raise LocalFarmError(
            f"the worker {WORKER_NAME} did not connect within {START_TIMEOUT:g} s;"
            f" see {self.worker_dir / 'twistd.log'} and {self.master_log}"
        )

    def stop(self) -> None:
        """Stop the worker and the master, then the buildlets they leave for a restart.

        ``buildbot stop`` gives a daemon 10 s; one still running then (a master whose clean
        shutdown waits for a build that never ends) is killed, so nothing is left behind.

        A master's coordinator leaves its buildlets running so that a restart re-adopts
        them; a finished demo (or test) leaves nothing running, so they are reaped too.
        """
        daemons = (("buildbot-worker", self.worker_dir), ("buildbot", self.master_dir))
        for tool, directory in daemons:
            pid_file = directory / "twistd.pid"
            if pid_file.exists():
                pid = int(pid_file.read_text().strip() or 0)
                subprocess.run(
                    [self._bin / tool, "stop", str(directory)],
                    env=self._env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
                if pid_file.exists():  # twistd removes it when it ends
                    _kill_if_running(pid)
        pools = farm_buildlets_dir(self.master_dir)
        for pool in sorted(pools.glob("*")):
            ProcessProvider(pool, reactor=None).thd_reap(set())
            with contextlib.suppress(OSError):
                pool.rmdir()
        with contextlib.suppress(OSError):
            pools.rmdir()

    @property
    def master_log(self) -> Path:
        """The master's twistd.log."""
        return self.master_dir / "twistd.log"

    def show_farm_status(self) -> None:
        """Print what the farm service reports at /plugins/farm/status."""
        status = self.get_json(f"{self.web_url}plugins/farm/status")
        masters = ", ".join(m["name"] for m in status["masters"])
        print(
            f"demo: farm service up on {status['backend']} "
            f"(schema {status['schema_version']}); masters: {masters}"
        )

    def show_record(self, name: str = "hello") -> None:
        """Print the newest build record of ``name`` (written just after its build finished)."""
        url = f"{self.web_url}plugins/farm/api/builds?name={name}&limit=1"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            builds = self.get_json(url)
            if builds:
                print(f"demo: build record {name}/{builds[0]['version']}:")
                print(json.dumps(builds[0], indent=1, sort_keys=True))
                return
            time.sleep(0.3)
        print(f"demo: no build record of {name} yet; see {self.master_log}")

    def show_on_demand(self, scheduler: str = "hello_on_demand") -> None:
        """Request an on-demand build twice: the first one builds, the second is a cache hit."""
        url = f"{self.web_url}plugins/farm/api/"
        try:
            first = self.get_json(url + "build", {"scheduler": scheduler})
            print(f"demo: on-demand request -> {first['status']} (key {first['key'][:12]}...)")
            with urllib.request.urlopen(
                f"{url}compat?scheduler={scheduler}", timeout=self.build_timeout
            ) as response:
                size = len(response.read())
            print(f"demo: /api/compat held the request until the build was done: {size} bytes")
            again = self.get_json(url + "build", {"scheduler": scheduler})
        except (MasterAPIError, OSError) as e:
            print(f"demo: no on-demand build ({e}); see docs/on-demand.md")
            return
        print(f"demo: the same request again -> {again['status']}, no new build:"
              f" {again.get('download')}")

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        env["FARM_WEB_PORT"] = str(self.web_port)
        env["FARM_PB_PORT"] = str(self.pb_port)
        env["PATH"] = f"{self._bin}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("FARM_WORKER_PASSWORD", self.password)
        if self.buildlet_user:
            env.setdefault("FARM_BUILDLET_USER", self.buildlet_user)
        return env

    def _run(self, command: list[Any], log: Path | None = None) -> None:
        done = subprocess.run(
            [str(part) for part in command],
            env=self._env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            where = f"; see {log}" if log else ""
            raise LocalFarmError(
                f"{' '.join(str(p) for p in command[:2])} failed ({done.returncode}):\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}{where}"
            )


def _kill_if_running(pid: int) -> None:
    """SIGKILL process ``pid`` if it still runs, and wait until it is gone (a zombie counts
    as gone: twistd daemons are not our children)."""
    if pid <= 0:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            if _is_zombie(pid):
                return
            time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
