"""A real master whose FarmLatentWorker builds on a docker pool over the test hosts.

:class:`HostFarm` writes the master's configuration, starts it with
:class:`~buildbot_farm.demo.LocalFarm` and answers what the failover tests and benchmark
ask: where a build request's builds are, what the hosts' states are. Its builder ``work``
runs one step that tells the hosts apart by their addresses: on the first host it waits (an
hour; the test kills the host under it), on the second it succeeds, anywhere else it fails.
A pool's ties go to the first host listed, so a build on an idle pool starts on the first
host, and its retry, once that host is down, can only succeed on the second. The build then
publishes a small artifact, so that the builder also serves on-demand jobs (its
``OnDemandScheduler`` is named like it).

The master's PB port listens on this machine's address on the *second* host's link, which
the first host reaches through its route to ``10.213.0.0/16``: the first host's death (its
engine killed, or its link taken down) leaves the master reachable from the second.
"""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, TypeVar

from buildbot_farm.demo import LocalFarm
from buildbot_farm.example import fill_secrets
from buildbot_farm.leases import keys
from tests.harness.docker_hosts import DockerTestHost
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port

SECRET = "host-farm-secret"
WORKER = "hosted"
BUILDER = "work"
POOL = "spread"
LEASE_USER = "user-buildbot"  # whom FarmLatentWorker leases as
RETRY = 5
SUCCESS = 0

MASTER_CFG = """
import os
from buildbot.plugins import schedulers, secrets, steps, util, worker

{preamble}
c["secretsProviders"] = [secrets.SecretInAFile(dirname=os.path.join(basedir, "secrets"))]
c["protocols"] = {{"pb": {{"port": f"tcp:{{os.environ['FARM_PB_PORT']}}:interface={pb_address}"}}}}
c["services"] = [util.FarmService(
    coordinator=util.FarmCoordinator(
        secret={secret!r}, on_stop="halt",
        pools=[util.BuildletPool({pool!r}, provider="docker", image={image!r}, max_count=4,
                                 hosts=[util.DockerHost(url, name=label, max_count=2,
                                                        tls=util.DockerTLS(
                                                            ca=ca, cert=cert,
                                                            key=util.Secret(key)))
                                        for label, url, ca, cert, key in {hosts!r}])],
    ),
    artifacts=util.ArtifactRepository(),
    on_demand=util.OnDemandBuilds(janitor_interval=1),
)]
c["workers"] = [
    worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"]),
    worker.FarmLatentWorker({worker!r}, buildlet_type={pool!r}, master_host={pb_address!r},
                            keepalive_interval={keepalive}),
]
c["builders"] = [util.BuilderConfig(name={builder!r}, workernames=[{worker!r}],
    factory=util.BuildFactory([
        steps.ShellCommand(
            name="work", timeout=7200,
            command=["python3", "-c", {script!r}, {stall_address!r}, {finish_address!r}]),
        steps.StringDownload("built\\n", workerdest="out/tool"),
        steps.ArtifactUpload(name="publish", workersrc="out/tool"),
    ]))]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=[{builder!r}]),
                   schedulers.OnDemandScheduler(name={builder!r}, builder={builder!r})]
"""

# The step: wait on the first host (argv[1] is its address), succeed on the second (argv[2]).
STEP_SCRIPT = """\
import socket, sys, time
def here(address):
    try:
        socket.socket().bind((address, 0))
    except OSError:
        return False
    return True
if here(sys.argv[1]):
    print("on the first host: waiting for it to die", flush=True)
    time.sleep(3600)
sys.exit(0 if here(sys.argv[2]) else 1)
"""

_T = TypeVar("_T")


def wait_for(
    predicate: Callable[[], _T | None], within: float, what: str, every: float = 0.2
) -> _T:
    """Poll ``predicate`` until it returns something true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {within:g} s waiting for {what}")


class HostFarm:
    """The master (in ``workdir``) with ``WORKER`` on a pool over ``hosts`` (two)."""

    def __init__(
        self, workdir: Path, hosts: list[DockerTestHost], image: str, keepalive: float = 1.0
    ) -> None:
        first, second = hosts
        self.hosts = hosts
        config = workdir / "master.cfg"
        config.write_text(MASTER_CFG.format(
            preamble=LOOPBACK_MASTER, pb_address=second.gateway, secret=SECRET, pool=POOL,
            image=image,
            hosts=[(f"h{n}", h.url, h.tls.ca, h.tls.cert, f"docker-key-h{n}")
                   for n, h in enumerate(hosts, start=1)],
            worker=WORKER, keepalive=keepalive, builder=BUILDER, script=STEP_SCRIPT,
            stall_address=first.address, finish_address=second.address,
        ))
        self.local = LocalFarm(config, workdir / "farm", env={
            "FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port(second.gateway)),
        })

    def start(self) -> None:
        """Create and start the master (its local worker is not needed: not started). Each
        host's client key reaches the pool as a Buildbot secret (``util.Secret``), from
        the master's secrets directory."""
        self.local.create()
        keys_pem = {f"docker-key-h{n}": Path(host.tls.key).read_text().strip()
                    for n, host in enumerate(self.hosts, start=1)}
        fill_secrets(self.local.secrets_dir, tuple(keys_pem), keys_pem)
        self.local.start_master()

    def stop(self) -> None:
        """Stop the master; its coordinator destroys the buildlets it holds (on_stop=halt)."""
        self.local.stop()

    def force(self) -> int:
        """Force a build of ``BUILDER``; return its build request's id."""
        answer = self.local.api("forceschedulers/force", {
            "jsonrpc": "2.0", "id": 1, "method": "force",
            "params": {"builderNames": [BUILDER]},
        })
        return int(next(iter(answer["result"][1].values())))

    def stop_build(self, build: dict[str, Any]) -> None:
        """Stop ``build`` (as the web UI's stop button does) and wait until it is complete."""
        self.local.api(f"builds/{build['buildid']}", {
            "jsonrpc": "2.0", "id": 1, "method": "stop", "params": {"reason": "test is done"},
        })
        wait_for(lambda: self.local.api(f"builds/{build['buildid']}")["builds"][0]["complete"],
                 120, f"build {build['buildid']} to stop")

    def builds(self, request_id: int) -> list[dict[str, Any]]:
        """The builds of build request ``request_id``, oldest first."""
        return list(self.local.api(f"buildrequests/{request_id}/builds")["builds"])

    def step_started(self, build: dict[str, Any]) -> bool:
        """Whether ``build``'s step has started (its worker attached and runs it)."""
        steps = self.local.api(f"builds/{build['buildid']}/steps")["steps"]
        return any(step["name"] == "work" and step["started_at"] for step in steps)

    def running_on_first_host(self, request_id: int) -> bool:
        """Whether the first build of ``request_id`` runs its step (so, on the first host)."""
        builds = self.builds(request_id)
        return bool(builds) and not builds[0]["complete"] and self.step_started(builds[0])

    def retried(self, request_id: int) -> list[dict[str, Any]] | None:
        """Both builds of ``request_id`` once the second has finished, else None."""
        builds = self.builds(request_id)
        return builds if len(builds) >= 2 and builds[-1]["complete"] else None

    def request_job(self) -> str:
        """Ask for an on-demand build of ``BUILDER``; return the job's key."""
        answer = self.farm_api("build", {"scheduler": BUILDER})
        return str(answer["key"])

    def job(self, key: str) -> dict[str, Any]:
        """On-demand job ``key``, with its attempts."""
        return self.farm_api(f"build/{key}")

    def farm_api(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The farm's own API (``/plugins/farm/api/PATH``), as JSON."""
        return dict(self.local.get_json(f"{self.local.web_url}plugins/farm/api/{path}", body))

    def lease_list(self, home: Path) -> str:
        """What ``buildbot-farm lease list`` prints for the workers' user (HOME ``home``)."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("FARM_")}
        env.update(
            HOME=str(home), FARM_COORDINATOR_URL=f"{self.local.web_url}plugins/farm/coordinator",
            FARM_USER=LEASE_USER, FARM_KEY=keys.user_key(SECRET.encode(), LEASE_USER),
        )
        env.pop("XDG_CONFIG_HOME", None)
        done = subprocess.run(
            [str(Path(sys.executable).parent / "buildbot-farm"), "lease", "list"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def buildlets_page(self) -> str:
        """The Farm's Buildlets page, as HTML."""
        url = f"{self.local.web_url}plugins/farm/ui/buildlets"
        with urllib.request.urlopen(url, timeout=60) as response:
            return str(response.read().decode())

    def host_row(self, host: str) -> str:
        """The Buildlets page's row of Docker host ``host``, its HTML unescaped."""
        rows = re.findall(f'<tr data-host="{re.escape(host)}">.*?</tr>', self.buildlets_page())
        assert len(rows) == 1, rows
        return html.unescape(rows[0])

    def host_state(self, label: str) -> dict[str, Any]:
        """Host ``label`` as the farm's ``/status`` shows it."""
        status = self.local.get_json(f"{self.local.web_url}plugins/farm/status")
        (row,) = [row for row in status["docker_hosts"] if row["host"] == label]
        return dict(row)
