"""Substantiate-to-attached: FarmLatentWorker on a warm docker pool vs DockerLatentWorker.

Issue 3's target: a warm FarmLatentWorker attaches in at most 0.5x the time Buildbot's own
DockerLatentWorker takes on the same image. One real master (``LocalFarm``) has both: a
DockerLatentWorker that runs a container of the worker test image per build, and a
FarmLatentWorker that leases a buildlet from a docker pool of that image with one kept warm.
Each has a builder running ``true``; they are forced in turn, one build at a time.

Two times per build, for the same builds. *Substantiate -> attached* is the issue's measure:
from Buildbot calling the worker's ``substantiate`` to that call succeeding (the worker has
attached), timed in the master by subclasses of both workers that log it (``LOG_MARK``).
*Force -> attached* is what a user sees: from just before the force request to the first
poll of ``/api/v2/workers/NAME`` (every POLL_INTERVAL) that shows the worker connected; it
adds Buildbot's own scheduling, the same for both. (Buildbot's REST timestamps are whole
seconds, and a latent worker's build starts *before* its worker substantiates, so neither a
build's nor a step's times can measure this.) Before each build both workers are gone and
the pool's warm buildlet is ready.
"""

from __future__ import annotations

import contextlib
import math
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import docker
from docker.errors import APIError, NotFound

from buildbot_farm.demo import LocalFarm
from buildbot_farm.leases.providers.docker import BUILDLET_LABEL, READY_PREFIX
from tests.harness.docker_engine import DockerEngine
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port
from tests.harness.worker_image import ensure_worker_image

ROUNDS = 8
RATIO_TARGET = 0.5
POLL_INTERVAL = 0.02
TIMEOUT = 120.0
SETTLE = 1.0
LOG_MARK = "bench-attach:"

MASTER_CFG = """
import os
import time

from buildbot.plugins import schedulers, steps, util, worker
from twisted.python import log


def timed(cls):
    \"\"\"``cls``, logging how long each substantiation took, for the benchmark to read.\"\"\"

    class Timed(cls):
        def substantiate(self, wfb, build):
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
]
trivial = util.BuildFactory([steps.ShellCommand(command=["true"], name="true")])
c["builders"] = [
    util.BuilderConfig(name="docker", workernames=[{docker_worker!r}], factory=trivial),
    util.BuilderConfig(name="farm", workernames=[{farm_worker!r}], factory=trivial),
]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["docker", "farm"])]
"""

# Run in one container of the image: the median wall time of a worker's Python start, which
# both sides pay on every build.
IMPORT_PROBE = """\
import statistics, subprocess, time
def took(args):
    started = time.perf_counter()
    subprocess.run(args, check=True)
    return time.perf_counter() - started
print(statistics.median(took(["python3", "-c", "import buildbot_worker.bot"]) for _ in range(5)))
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
        self.workers = {"docker": f"docker-latent-{run}", "farm": f"farm-latent-{run}"}
        self.pool = f"attach-{run}"
        # The pool's buildlets that builds have leased: being destroyed, never warm again.
        self.leased: set[str] = set()
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

    def attach_time(self, builder: str) -> float:
        """Force ``builder`` once; seconds until its worker is connected (the build must pass)."""
        self.wait_idle()
        worker = self.workers[builder]
        if builder == "farm":
            self.leased.update(self.pool_containers())
        started = time.perf_counter()
        answer = self.farm.api(
            "forceschedulers/force",
            {"jsonrpc": "2.0", "id": 1, "method": "force", "params": {"builderNames": [builder]}},
        )
        request_id = next(iter(answer["result"][1].values()))
        wait_for(lambda: self.connected(worker), f"{worker} to attach", POLL_INTERVAL)
        took = time.perf_counter() - started

        def finished() -> list[dict[str, Any]]:
            builds: list[dict[str, Any]] = self.farm.api(f"buildrequests/{request_id}/builds")[
                "builds"
            ]
            return builds if builds and builds[-1]["complete"] else []

        build = wait_for(finished, f"the {builder} build to finish")[-1]
        if build["results"] != 0:
            raise RuntimeError(
                f"the {builder} build failed ({build['state_string']}); see {self.farm.master_log}"
            )
        return took

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
        """Wait until both workers are gone and the pool's one buildlet is ready; then settle."""
        wait_for(
            lambda: (
                not any(self.connected(w) for w in self.workers.values())
                and not self.docker_worker_containers()
                and self.pool_is_warm()
            ),
            "both workers to stop and the pool to be warm again",
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
        self.farm.stop()
        for container in [*self.docker_worker_containers(), *self.pool_containers()]:
            with contextlib.suppress(NotFound):
                self.client.api.remove_container(container, force=True, v=True)


def components(client: docker.DockerClient, image: str) -> dict[str, float]:
    """Medians of 5, in seconds: a container's create + start, and buildbot_worker's import.

    The first is what DockerLatentWorker adds to each build; the second, both sides pay.
    """
    api = client.api
    host_config = api.create_host_config(network_mode="host", init=True)
    starts = []
    for _ in range(5):
        began = time.perf_counter()
        container = api.create_container(image, ["sleep", "60"], host_config=host_config)
        try:
            api.start(container)
            starts.append(time.perf_counter() - began)
        finally:
            api.remove_container(container, force=True)
    container = api.create_container(
        image, ["python3", "-c", IMPORT_PROBE], host_config=host_config
    )
    try:
        api.start(container)
        status = api.wait(container, timeout=TIMEOUT)["StatusCode"]
        output = api.logs(container).decode(errors="replace")
    finally:
        api.remove_container(container, force=True)
    if status != 0:
        raise RuntimeError(f"the import probe failed (exit {status}): {output}")
    return {
        "container create + start (host network, init)": statistics.median(starts),
        "python3 -c 'import buildbot_worker.bot'": float(output.strip()),
    }


def wait_for(probe: Callable[[], _T], what: str, interval: float = 0.1) -> _T:
    """Poll ``probe`` until it returns something true; return that."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {TIMEOUT:g} s waiting for {what}")


def percentile(samples: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def measure(bench: AttachBench) -> dict[str, dict[str, list[float]]]:
    """One warm-up build each, then ROUNDS of each, alternating which goes first."""
    for builder in ("docker", "farm"):
        bench.attach_time(builder)
    forced: dict[str, list[float]] = {"docker": [], "farm": []}
    for i in range(ROUNDS):
        order = ("docker", "farm") if i % 2 == 0 else ("farm", "docker")
        for builder in order:
            forced[builder].append(bench.attach_time(builder))
    substantiated = {}
    for builder, times in bench.substantiations().items():
        if len(times) != 1 + ROUNDS:
            raise RuntimeError(
                f"the master logged {len(times)} substantiations of the {builder} worker for"
                f" {1 + ROUNDS} builds; see {bench.farm.master_log}"
            )
        substantiated[builder] = times[1:]
    return {
        "substantiate -> attached (master)": substantiated,
        f"force -> attached (REST poll, {POLL_INTERVAL * 1000:.0f} ms)": forced,
    }


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(samples: dict[str, dict[str, list[float]]], costs: dict[str, float], image: str) -> str:
    rows = [
        [
            f"ms, n={ROUNDS} each (max = p90 at this n)",
            "DockerLatent p50",
            "max",
            "FarmLatent p50",
            "max",
            "Farm/Docker p50",
            "target",
        ]
    ]
    verdicts = []
    for measure_name, by_builder in samples.items():
        docker_p50 = percentile(by_builder["docker"], 50)
        farm_p50 = percentile(by_builder["farm"], 50)
        ratio = farm_p50 / docker_p50
        rows.append(
            [
                measure_name,
                f"{docker_p50 * 1000:.0f}",
                f"{max(by_builder['docker']) * 1000:.0f}",
                f"{farm_p50 * 1000:.0f}",
                f"{max(by_builder['farm']) * 1000:.0f}",
                f"{ratio:.2f}x",
                f"<= {RATIO_TARGET:g}x",
            ]
        )
        verdicts.append(f"{measure_name}: {'met' if ratio <= RATIO_TARGET else 'MISSED'}")
    parts = [["in a container of the image, ms (median of 5)", ""]]
    parts += [[label, f"{seconds * 1000:.0f}"] for label, seconds in costs.items()]
    return "\n".join(
        [
            f"image {image}; FarmLatentWorker on a docker pool with warm=1",
            table(rows),
            f"target: {'; '.join(verdicts)}",
            "",
            table(parts),
        ]
    )


def main() -> None:
    """Measure, print the tables, and leave no master, worker or container behind."""
    engine = DockerEngine()
    engine.ensure()
    client = engine.client()
    try:
        image = ensure_worker_image(client)
        with tempfile.TemporaryDirectory(prefix="bench-attach-") as workdir:
            bench = AttachBench(Path(workdir), client, f"unix://{engine.socket_path}", image)
            try:
                bench.farm.create()
                bench.farm.start()
                samples = measure(bench)
            finally:
                bench.close()
        print(report(samples, components(client, image), image), flush=True)
    finally:
        client.close()
        engine.stop()
