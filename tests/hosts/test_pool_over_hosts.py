"""A docker pool spread over two real test hosts: placement, the proxy, and a host that dies."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.web import server

from buildbot_farm import db
from buildbot_farm.leases import keys
from buildbot_farm.leases.agent_client import AgentClient
from buildbot_farm.leases.api import CoordinatorResource
from buildbot_farm.leases.client import CoordinatorClient, CoordinatorRequestError
from buildbot_farm.leases.config import BuildletPool, FarmCoordinator
from buildbot_farm.leases.coordinator import Coordinator
from buildbot_farm.leases.docker_hosts import DockerHost, DockerTLS
from buildbot_farm.leases.providers.base import BuildletProvider
from buildbot_farm.leases.providers.docker_hosts import docker_hosts_status
from tests.harness.docker_hosts import DockerTestHost
from tests.harness.twisted_reactor import reactor
from tests.leases.conftest import plain_http

pytestmark = pytest.mark.docker

SECRET = "test-coordinator-secret"


def pool_over(hosts: list[DockerTestHost], image: str) -> BuildletPool:
    """A pool over ``hosts``: the first host's CA given as PEM text, the rest as paths."""
    return BuildletPool(
        "spread", provider="docker", image=image, max_count=4,
        hosts=[
            DockerHost(
                host.url, name=f"h{number}", max_count=2,
                tls=DockerTLS(
                    ca=Path(host.tls.ca).read_text() if number == 1 else host.tls.ca,
                    cert=host.tls.cert, key=host.tls.key,
                ),
            )
            for number, host in enumerate(hosts, start=1)
        ],
    )


async def wait_for(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Poll ``condition()`` (may be async) until true; return the seconds it took."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        result = condition()
        if hasattr(result, "__await__"):
            result = await result
        if result:
            return time.monotonic() - began
        await task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"{what} did not happen within {timeout} s")


@dataclass
class Farm:
    """A coordinator over the test hosts, served on loopback, and alice, its user."""

    coordinator: Coordinator
    provider: BuildletProvider
    database: db.Database
    port: Any
    alice: CoordinatorClient
    owner: str
    pool_settings: dict[str, Any]
    recovered: list[str]

    async def host_of(self, name: str) -> str:
        """The label of the host buildlet ``name`` is on."""
        lease = await self.coordinator.table.get(name)
        assert lease is not None
        return str(json.loads(lease.handle)["host"])

    async def lost(self, name: str) -> bool:
        """Whether the lease on ``name`` is gone."""
        return await self.coordinator.table.get(name) is None

    def host_state(self, label: str) -> dict[str, Any]:
        """Host ``label`` as /status shows it."""
        (row,) = [row for row in docker_hosts_status(self.coordinator) if row["host"] == label]
        return row

    async def restarted(self, hosts: list[DockerTestHost], image: str, directory: Path) -> Farm:
        """This farm's coordinator stopped (its buildlets left running) and a new one started
        on the same database, as after a master's restart."""
        await self.port.stopListening()
        await self.coordinator.stop()
        return await start_farm(hosts, image, directory, self.database, self.owner,
                                **self.pool_settings)

    async def stop(self) -> None:
        """Stop listening, halt every lease, remove the provider's remaining containers and close
        the database."""
        await self.port.stopListening()
        await self.coordinator.halt_all()
        await self.provider.reap(set())
        await self.database.stop()


async def start_farm(
    hosts: list[DockerTestHost], image: str, directory: Path,
    database: db.Database | None = None, owner: str | None = None, **pool_settings: Any,
) -> Farm:
    """A coordinator over ``hosts`` (on ``database`` and as ``owner`` when given: a restart);
    ``pool_settings`` are BuildletPool settings over :func:`pool_over`'s."""
    pool = dataclasses.replace(pool_over(hosts, image), **pool_settings)
    settings = FarmCoordinator(secret=SECRET, pools=[pool])
    assert settings.problems() == []
    owner = owner or f"test-{uuid.uuid4().hex[:8]}"
    types = settings.buildlet_types(directory, reactor, AgentClient(plain_http()), owner)
    if database is None:
        database = await db.connect(f"sqlite:///{directory / 'farm.sqlite'}", reactor)
    coordinator = Coordinator(database, reactor, types, AgentClient(plain_http()))
    recovered = await coordinator.start()
    port = reactor.listenTCP(
        0, server.Site(CoordinatorResource(coordinator, SECRET.encode(), reactor)),
        interface="127.0.0.1",
    )
    alice = CoordinatorClient(
        f"http://127.0.0.1:{port.getHost().port}", "user-alice",
        keys.user_key(SECRET.encode(), "user-alice"), plain_http(),
    )
    return Farm(coordinator, types["spread"].provider, database, port, alice, owner,
                pool_settings, recovered)


@pytest_twisted.ensureDeferred
async def test_an_unreachable_host_is_marked_down_then_taken_back(
    docker_hosts: list[DockerTestHost], base_image: str, tmp_path: Path
) -> None:
    """A host whose link goes down is marked down with "does not answer" and its lease lost;
    once its link is up again it is marked up and takes the next buildlet."""
    farm = await start_farm(docker_hosts, base_image, tmp_path)
    try:
        names = [(await farm.alice.create("spread"))["Name"] for _ in docker_hosts]
        (on_h2,) = [name for name in names if await farm.host_of(name) == "h2"]
        docker_hosts[1].set_link(up=False)
        try:
            detected = await wait_for(lambda: farm.lost(on_h2), 20.0, "losing h2's lease")
            print(f"unreachable host detected and its lease lost in {detected:.1f} s")
            print(f"h2 down: {farm.host_state('h2')['reason']}")
            assert "does not answer" in farm.host_state("h2")["reason"]
        finally:
            docker_hosts[1].set_link(up=True)
        await wait_for(lambda: farm.host_state("h2")["up"], 20.0, "h2 answering again")
        assert await farm.host_of((await farm.alice.create("spread"))["Name"]) == "h2"
    finally:
        await farm.stop()


@pytest_twisted.ensureDeferred
async def test_buildlets_spread_over_hosts_and_a_dead_host_loses_its_leases(
    docker_hosts: list[DockerTestHost], base_image: str, tmp_path: Path
) -> None:
    """Buildlets go one per host, each agent on its host's address; when h1's engine is
    killed its lease is lost with the reason and new buildlets go to h2; once h1's engine
    is back its old container is reaped and it takes buildlets again."""
    farm = await start_farm(docker_hosts, base_image, tmp_path)
    coordinator, alice = farm.coordinator, farm.alice
    (tls_dir,) = (tmp_path / "docker-tls" / "spread").iterdir()
    assert tls_dir.name == "h1"
    assert (tls_dir / "ca.pem").stat().st_mode & 0o077 == 0
    try:
        # Spread: two buildlets, one on each host, each agent on its host's own address.
        placed = {}
        for _ in docker_hosts:
            name = (await alice.create("spread"))["Name"]
            lease = await coordinator.table.get(name)
            assert lease is not None
            placed[json.loads(lease.handle)["host"]] = (name, lease.url)
        assert sorted(placed) == ["h1", "h2"]
        for number, host in enumerate(docker_hosts, start=1):
            name, url = placed[f"h{number}"]
            assert url.startswith(f"http://{host.address}:")
            output: list[bytes] = []
            status = await alice.exec(name, "sh", ["-c", "echo on $0", name],
                                      on_output=output.append)
            assert (status.exit_code, b"".join(output)) == (0, f"on {name}\n".encode())

        # h1's engine dies: h1 is marked down with the reason, its lease is lost with it.
        lost_name = placed["h1"][0]
        docker_hosts[0].kill_engine()
        async def gone() -> bool:
            return await coordinator.table.get(lost_name) is None

        detected = await wait_for(gone, 20.0, "losing the lease on the dead host")
        print(f"dead host detected and its lease lost in {detected:.1f} s")
        with pytest.raises(CoordinatorRequestError, match="lost with host h1: its Docker engine"):
            await alice.exec(lost_name, "true", [])
        (h1,) = [row for row in docker_hosts_status(coordinator) if row["host"] == "h1"]
        assert h1["up"] is False
        assert "does not answer" in h1["reason"]

        # The next buildlet goes on h2, although h1 had more room before it died.
        began = time.monotonic()
        name = (await alice.create("spread"))["Name"]
        print(f"next buildlet created on the other host in {time.monotonic() - began:.1f} s")
        lease = await coordinator.table.get(name)
        assert lease is not None
        assert json.loads(lease.handle)["host"] == "h2"
        status = await alice.exec(name, "true", [])
        assert status.exit_code == 0

        # h1 comes back: its old container is reaped, and it takes buildlets again.
        docker_hosts[0].restart_engine()
        await wait_for(lambda: all(row["up"] for row in docker_hosts_status(coordinator)),
                       20.0, "h1 answering again")
        client = docker_hosts[0].client()
        try:
            assert client.containers.list(all=True) == []
        finally:
            client.close()
        lease = await coordinator.table.get((await alice.create("spread"))["Name"])
        assert lease is not None
        assert json.loads(lease.handle)["host"] == "h1"
    finally:
        await farm.stop()


@pytest_twisted.ensureDeferred
async def test_a_host_whose_agents_do_not_answer_loses_its_leases_and_is_skipped(
    docker_hosts: list[DockerTestHost], base_image: str, tmp_path: Path
) -> None:
    """With h2's engine answering but its agents' ports blocked, h2's lease is lost with the
    reason, a buildlet started there meanwhile is started again on h1, and once the ports
    open h2 takes buildlets again; h1's lease is untouched throughout."""
    farm = await start_farm(docker_hosts, base_image, tmp_path)
    try:
        names = [(await farm.alice.create("spread"))["Name"] for _ in docker_hosts]
        on = {await farm.host_of(name): name for name in names}
        docker_hosts[1].block_agents(True)
        try:
            detected = await wait_for(lambda: farm.lost(on["h2"]), 20.0, "losing h2's lease")
            print(f"h2's silent agents detected and its lease lost in {detected:.1f} s")
            with pytest.raises(CoordinatorRequestError,
                               match="lost with host h2: its buildlets' agents at "):
                await farm.alice.exec(on["h2"], "true", [])
            await wait_for(lambda: containers_on(docker_hosts[1]) == [], 20.0,
                           "h2's old container to be reaped")
            await wait_for(lambda: farm.host_state("h2")["up"], 20.0, "h2's engine answering")
            # h2, emptier, is tried first; its agent is unreachable, so h1 takes the buildlet.
            since = int(time.time()) - 1
            moved = (await farm.alice.create("spread"))["Name"]
            assert await farm.host_of(moved) == "h1"
            assert len(created_on(docker_hosts[1], since)) == 1
            assert (await farm.alice.exec(moved, "true", [])).exit_code == 0
            (lost,) = await farm.alice.lost_buildlets()
            assert lost["Name"] == on["h2"]
            assert "although its Docker engine does" in lost["Reason"]
        finally:
            docker_hosts[1].block_agents(False)
        await wait_for(lambda: farm.host_state("h2")["up"], 20.0, "h2 taken back")
        again = (await farm.alice.create("spread"))["Name"]
        assert await farm.host_of(again) == "h2"
        assert (await farm.alice.exec(again, "true", [])).exit_code == 0
        assert (await farm.alice.exec(on["h1"], "true", [])).exit_code == 0
    finally:
        await farm.stop()


def containers_on(host: DockerTestHost) -> list[str]:
    """The names of every container on ``host``'s engine, running or not."""
    client = host.client()
    try:
        return sorted(container.name for container in client.containers.list(all=True))
    finally:
        client.close()


def created_on(host: DockerTestHost, since: int) -> list[dict[str, Any]]:
    """The engine's container create events on ``host`` from ``since`` until now."""
    client = host.client()
    try:
        return list(client.events(since=since, until=int(time.time()) + 1, decode=True,
                                  filters={"type": ["container"], "event": ["create"]}))
    finally:
        client.close()
