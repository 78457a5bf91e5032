"""Placement: 100 creates on a pool over three Docker hosts against a pool on one host.

Issue 17's target: over three hosts, the p50 create latency is at most 1.2x a one-host
pool's, and the buildlets are spread over the hosts. Four test hosts (network namespaces
with their own TLS dockerd, ``tests/harness/docker_hosts.py``; run as root): pool
``spread`` over h1-h3 (``max_count`` 34 each), pool ``single`` on h4 alone (``max_count``
100), both docker pools of one coordinator (SQLite, served on loopback), no warm buildlets,
so every create starts a container and its agent. The creates take turns between the pools
in batches of BATCH, each timed from the client's POST to the lease's answer, and every
buildlet is held until the end: at any time each pool holds as many as the other and both
see the same load on the machine. Printed: the spread pool's buildlets per host, each
pool's p50 and p90 create latency, and the ratio of the p50s.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from twisted.web import server

from benchmarks.bench_leases import percentile, run_on_reactor, table
from buildbot_farm import db
from buildbot_farm.leases import keys
from buildbot_farm.leases.agent_client import AgentClient
from buildbot_farm.leases.api import CoordinatorResource
from buildbot_farm.leases.client import CoordinatorClient
from buildbot_farm.leases.config import BuildletPool, FarmCoordinator
from buildbot_farm.leases.coordinator import Coordinator
from buildbot_farm.leases.docker_hosts import DockerHost, DockerTLS
from buildbot_farm.web.client import http_client
from tests.harness.docker_engine import DockerEngine
from tests.harness.docker_hosts import DockerTestHost, DockerTestHosts
from tests.harness.images import ensure_base_image
from tests.harness.twisted_reactor import reactor

CREATES = 100
SPREAD_HOSTS = 3
BATCH = 10
TARGET = 1.2
SECRET = "bench-placement-secret"
USER = "user-bench"


def pools(hosts: list[DockerTestHost], image: str, creates: int) -> list[BuildletPool]:
    """``spread`` over all hosts but the last, ``single`` on the last, each for ``creates``."""
    spread, single = hosts[:-1], hosts[-1]
    per_host = -(-creates // len(spread))

    def docker_host(host: DockerTestHost, label: str, max_count: int) -> DockerHost:
        tls = DockerTLS(ca=host.tls.ca, cert=host.tls.cert, key=host.tls.key)
        return DockerHost(host.url, tls=tls, max_count=max_count, name=label)

    return [
        BuildletPool("spread", provider="docker", image=image, max_count=creates,
                     hosts=[docker_host(host, f"h{n}", per_host)
                            for n, host in enumerate(spread, start=1)]),
        BuildletPool("single", provider="docker", image=image, max_count=creates,
                     hosts=[docker_host(single, f"h{len(hosts)}", creates)]),
    ]


async def measure(
    hosts: list[DockerTestHost], image: str, workdir: Path, creates: int
) -> tuple[dict[str, list[float]], Counter[str]]:
    """Seconds of each create by pool, and the spread pool's buildlets per host."""
    settings = FarmCoordinator(secret=SECRET, pools=pools(hosts, image, creates))
    assert settings.problems() == [], settings.problems()
    types = settings.buildlet_types(workdir, reactor, AgentClient(http_client(reactor)), "bench")
    database = await db.connect(f"sqlite:///{workdir / 'farm.sqlite'}", reactor)
    coordinator = Coordinator(database, reactor, types, AgentClient(http_client(reactor)))
    await coordinator.start()
    port = reactor.listenTCP(
        0, server.Site(CoordinatorResource(coordinator, SECRET.encode(), reactor)),
        interface="127.0.0.1",
    )
    client = CoordinatorClient(
        f"http://127.0.0.1:{port.getHost().port}", USER,
        keys.user_key(SECRET.encode(), USER), http_client(reactor),
    )
    seconds: dict[str, list[float]] = {"single": [], "spread": []}
    spread_hosts: Counter[str] = Counter()
    try:
        while len(seconds["spread"]) < creates:
            for pool, samples in seconds.items():
                for _ in range(min(BATCH, creates - len(samples))):
                    began = time.monotonic()
                    name = (await client.create(pool))["Name"]
                    samples.append(time.monotonic() - began)
                    if pool == "spread":
                        lease = await coordinator.table.get(name)
                        assert lease is not None
                        spread_hosts[json.loads(lease.handle)["host"]] += 1
    finally:
        await port.stopListening()
        await coordinator.halt_all()
        for buildlet_type in types.values():
            await buildlet_type.provider.reap(set())
        await database.stop()
    return seconds, spread_hosts


def report(seconds: dict[str, list[float]], spread_hosts: Counter[str], creates: int) -> str:
    """The table of both pools' create latencies, the spread, and the verdict."""
    rows = [["pool", "hosts", "creates", "p50 ms", "p90 ms", "mean ms"]]
    for pool, hosts in (("single", "1"), ("spread", str(SPREAD_HOSTS))):
        samples = seconds[pool]
        rows.append([pool, hosts, str(len(samples)), f"{statistics.median(samples) * 1e3:.0f}",
                     f"{percentile(samples, 90) * 1e3:.0f}",
                     f"{statistics.fmean(samples) * 1e3:.0f}"])
    ratio = statistics.median(seconds["spread"]) / statistics.median(seconds["single"])
    verdict = "meets" if ratio <= TARGET else "misses"
    spread = ", ".join(f"{host} {count}" for host, count in sorted(spread_hosts.items()))
    return (f"{creates} cold creates per pool, in turns of {BATCH}, all held to the end:\n"
            f"{table(rows)}\n"
            f"spread pool's buildlets per host: {spread}\n"
            f"p50 spread / single: {ratio:.2f}x ({verdict} the target of <= {TARGET:g}x)")


def main(creates: int = CREATES) -> None:
    """Start the test hosts, measure, print the table, and tear everything down."""
    engine = DockerEngine(None)
    engine.ensure()
    client = engine.client()
    image = ensure_base_image(client)
    client.close()
    hosts = DockerTestHosts()
    workdir = Path(tempfile.mkdtemp(prefix="bench-placement-"))
    try:
        hosts.start(SPREAD_HOSTS + 1, [image], Path(engine.socket_path))
        print(f"{SPREAD_HOSTS + 1} test hosts started in {hosts.startup_seconds:.1f} s",
              flush=True)
        seconds, spread_hosts = run_on_reactor(
            lambda: measure(hosts.hosts, image, workdir, creates)
        )
    finally:
        hosts.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        engine.stop()
    print(report(seconds, spread_hosts, creates), flush=True)
