"""The master ``bench_attach`` measures: Docker's and the farm's latent workers side by side.

``AttachBench`` runs a real master (``LocalFarm``) whose builders ``docker``, ``farm`` and
``farm-late`` each have one worker: a DockerLatentWorker on the worker test image, a
FarmLatentWorker on a docker pool of that image with one buildlet kept warm, and the same with
``start_on_request=0``. It forces one builder at a time and times, from the master's websocket
events (:mod:`benchmarks.master_events`), when the worker showed connected and when the
build's step started; the master logs how long each substantiation took (``LOG_MARK``).
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import docker
from docker.errors import APIError, NotFound

from benchmarks.master_events import MasterEvents
from buildbot_farm.demo import LocalFarm
from buildbot_farm.leases.providers.docker import BUILDLET_LABEL, READY_PREFIX
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port

TIMEOUT = 120.0
SETTLE = 1.0
LOG_MARK = "bench-attach:"
# The master's events the benchmark listens to: workers connecting, builds and steps starting.
EVENT_PATHS = ["workers/*/*", "builds/*/*", "steps/*/*"]

MASTER_CFG = """
import os
import time

from buildbot.plugins import schedulers, steps, util, worker
from buildbot.worker.latent import States
from twisted.python import log


def timed(cls):
    \"\"\"``cls``, logging how long each substantiation took from the call that started it.\"\"\"

    class Timed(cls):
        def substantiate(self, wfb, build):
            if self.state != States.NOT_SUBSTANTIATED:  # a call that waits for a started one
                return super().substantiate(wfb, build)
            began = time.perf_counter()
            substantiated = super().substantiate(wfb, build)

            def done(result):
                took = time.perf_counter() - began
                log.msg(f"{mark} {{self.name}} substantiated={{result}} in {{took:.6f}} s")
                return result

            return substantiated.addCallback(done)

    return Timed


{preamble}
c["services"] = [util.FarmService(coordinator=util.FarmCoordinator(
    secret={secret!r},
    pools=[util.BuildletPool({pool!r}, provider="docker", image={image!r}, max_count=2, warm=1)],
))]
c["workers"] = [
    worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"]),
    timed(worker.DockerLatentWorker)(
        {docker_worker!r}, None, docker_host={docker_host!r}, image={image!r},
        masterFQDN="127.0.0.1", hostconfig={{"network_mode": "host"}},
    ),
    timed(worker.FarmLatentWorker)({farm_worker!r}, buildlet_type={pool!r}),
    timed(worker.FarmLatentWorker)({late_worker!r}, buildlet_type={pool!r}, start_on_request=0),
]
trivial = util.BuildFactory([steps.ShellCommand(command=["true"], name="true")])
c["builders"] = [
    util.BuilderConfig(name="docker", workernames=[{docker_worker!r}], factory=trivial),
    util.BuilderConfig(name="farm", workernames=[{farm_worker!r}], factory=trivial),
    util.BuilderConfig(name="farm-late", workernames=[{late_worker!r}], factory=trivial),
]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=[
    "docker", "farm", "farm-late"])]
"""


_T = TypeVar("_T")




class AttachBench:
    """A master (in ``workdir``) with both workers, on the engine ``client`` talks to."""

    def __init__(
        self, workdir: Path, client: docker.DockerClient, docker_host: str, image: str
    ) -> None:
        run = uuid.uuid4().hex[:8]
        self.client = client
        self.image = image
        self.workers = {
            "docker": f"docker-latent-{run}",
            "farm": f"farm-latent-{run}",
            "farm-late": f"farm-late-{run}",
        }
        self.pool = f"attach-{run}"
        # The pool's buildlets that builds have leased: being destroyed, never warm again.
        self.leased: set[str] = set()
        self.events: MasterEvents | None = None
        config = workdir / "master.cfg"
        config.write_text(
            MASTER_CFG.format(
                preamble=LOOPBACK_MASTER,
                mark=LOG_MARK,
                secret=f"bench-attach-secret-{run}",
                pool=self.pool,
                image=image,
                docker_host=docker_host,
                docker_worker=self.workers["docker"],
                farm_worker=self.workers["farm"],
                late_worker=self.workers["farm-late"],
            )
        )
        self.farm = LocalFarm(
            config,
            workdir / "farm",
            env={
                "FARM_WEB_PORT": str(free_port()),
                "FARM_PB_PORT": str(free_port()),
                "DOCKER_HOST": docker_host,
            },
            build_timeout=TIMEOUT,
        )

    def start(self) -> None:
        """Start the master and its local worker; listen to its events."""
        self.farm.create()
        self.farm.start()
        self.events = MasterEvents(self.farm.web_port, EVENT_PATHS)

    def force_times(self, builder: str) -> dict[str, float]:
        """Force ``builder`` once; seconds until its worker shows connected and until its
        step started (the build must pass)."""
        events = self.events
        if events is None:
            raise RuntimeError("AttachBench.start() first")
        self.wait_idle()
        worker = self.workers[builder]
        if builder != "docker":
            self.leased.update(self.pool_containers())
        since = len(events.events)
        started = time.perf_counter()
        answer = self.farm.api(
            "forceschedulers/force",
            {"jsonrpc": "2.0", "id": 1, "method": "force", "params": {"builderNames": [builder]}},
        )
        request_id = next(iter(answer["result"][1].values()))
        events.wait(
            lambda key, m: key.endswith("/connected") and m.get("name") == worker,
            since, f"{worker} connecting", TIMEOUT,
        )
        if not self.connected(worker):
            raise RuntimeError(f"{worker} connected, but /api/v2/workers does not say so")
        attached = time.perf_counter() - started
        _, _, build = events.wait(
            lambda key, m: key.endswith("/new") and m.get("buildrequestid") == request_id,
            since, f"the build of request {request_id}", TIMEOUT,
        )
        step_started, _, _ = events.wait(
            lambda key, m: (key.endswith("/started") and m.get("buildid") == build["buildid"]
                            and m.get("name") == "true"),
            since, f"the step of build {build['buildid']} starting", TIMEOUT,
        )

        def finished() -> list[dict[str, Any]]:
            builds: list[dict[str, Any]] = self.farm.api(f"buildrequests/{request_id}/builds")[
                "builds"
            ]
            return builds if builds and builds[-1]["complete"] else []

        done = wait_for(finished, f"the {builder} build to finish")[-1]
        if done["results"] != 0:
            raise RuntimeError(
                f"the {builder} build failed ({done['state_string']}); see {self.farm.master_log}"
            )
        return {"force -> attached": attached, "force -> first step": step_started - started}

    def connected(self, worker: str) -> bool:
        """Whether ``worker`` is attached to the master."""
        return bool(self.farm.api(f"workers/{worker}")["workers"][0]["connected_to"])

    def substantiations(self) -> dict[str, list[float]]:
        """Seconds of each substantiation so far, per builder, in order, from the master's log."""
        text = self.farm.master_log.read_text(errors="replace")
        return {
            builder: [
                float(seconds)
                for seconds in re.findall(
                    rf"{LOG_MARK} {re.escape(worker)} substantiated=True in ([\d.]+) s", text
                )
            ]
            for builder, worker in self.workers.items()
        }

    def wait_idle(self) -> None:
        """Wait until every worker is gone and the pool's one buildlet is ready; then settle."""
        wait_for(
            lambda: (
                not any(self.connected(w) for w in self.workers.values())
                and not self.docker_worker_containers()
                and self.pool_is_warm()
            ),
            "every worker to stop and the pool to be warm again",
        )
        time.sleep(SETTLE)

    def docker_worker_containers(self) -> list[str]:
        """Ids of DockerLatentWorker's containers (it names them ``buildbot-WORKER-HASH``)."""
        name = f"buildbot-{self.workers['docker']}-"
        return [c["Id"] for c in self.client.api.containers(all=True, filters={"name": name})]

    def pool_containers(self) -> list[str]:
        """Ids of the pool's buildlet containers (buildlets are named ``OWNER-TYPE-N``)."""
        containers = self.client.api.containers(all=True, filters={"label": BUILDLET_LABEL})
        return [c["Id"] for c in containers if f"-{self.pool}-" in c["Labels"][BUILDLET_LABEL]]

    def pool_is_warm(self) -> bool:
        """Whether the pool's one buildlet is new (no build leased it) and its agent is ready."""
        containers = self.pool_containers()
        if len(containers) != 1 or containers[0] in self.leased:
            return False
        try:
            return READY_PREFIX.encode() in self.client.api.logs(containers[0])
        except APIError:  # gone, or being removed
            return False

    def close(self) -> None:
        """Stop the master and its worker, then remove every container the master made.

        The coordinator leaves its buildlets running for a restart to re-adopt (the warm
        one at least), and LocalFarm reaps only process buildlets.
        """
        if self.events is not None:
            self.events.close()
        self.farm.stop()
        for container in [*self.docker_worker_containers(), *self.pool_containers()]:
            with contextlib.suppress(NotFound):
                self.client.api.remove_container(container, force=True, v=True)



def wait_for(probe: Callable[[], _T], what: str, interval: float = 0.1) -> _T:
    """Poll ``probe`` until it returns something true; return that."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {TIMEOUT:g} s waiting for {what}")


