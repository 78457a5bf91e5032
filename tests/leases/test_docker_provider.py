"""The docker provider on the real engine: containers as buildlets behind a real coordinator."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import docker
import pytest
import pytest_twisted
from docker.errors import NotFound
from twisted.internet import task
from twisted.web import server

from buildbot_farm import db
from buildbot_farm.leases import keys
from buildbot_farm.leases.agent_client import AgentClient
from buildbot_farm.leases.api import CoordinatorResource
from buildbot_farm.leases.client import CoordinatorClient, CoordinatorRequestError
from buildbot_farm.leases.coordinator import Coordinator
from buildbot_farm.leases.pools import BuildletType
from buildbot_farm.leases.providers import DockerProvider, ProviderError
from buildbot_farm.leases.providers.docker import BUILDLET_LABEL, INSTANCE_LABEL
from tests.harness.twisted_reactor import reactor
from tests.leases.conftest import plain_http
from tests.leases.test_isolation import assert_all_fail, attacks

pytestmark = pytest.mark.docker

SECRET = b"test-coordinator-secret"


@dataclass
class DockerCoordinator:
    """A coordinator whose type ``docker`` is served by ``provider``, over HTTP on 127.0.0.1."""

    coordinator: Coordinator
    provider: DockerProvider
    url: str
    port: Any

    def client(self, user: str = "user-alice") -> CoordinatorClient:
        """A client of this coordinator acting as ``user``, with that user's key."""
        return CoordinatorClient(self.url, user, keys.user_key(SECRET, user), plain_http())

    async def handle(self, name: str) -> str:
        """The container id behind buildlet ``name``."""
        lease = await self.coordinator.table.get(name)
        assert lease is not None
        return str(json.loads(lease.handle)["container"])


StartDockerCoordinator = Callable[..., Awaitable[DockerCoordinator]]


@pytest.fixture
def instance(docker_client: docker.DockerClient) -> Iterator[str]:
    """A provider instance label of this test's own; its containers are removed after it."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    for container in labelled(docker_client, name):
        container.remove(force=True)


def labelled(client: docker.DockerClient, instance: str) -> list[Any]:
    """Every container, running or not, that carries the label of farm instance ``instance``."""
    return list(client.containers.list(all=True, filters={"label": f"{INSTANCE_LABEL}={instance}"}))


@pytest_twisted.async_yield_fixture
async def start_docker_coordinator(
    tmp_path: Path, base_image: str, instance: str
) -> AsyncIterator[StartDockerCoordinator]:
    """A factory of docker coordinators sharing one database and instance (like restarts do)."""
    started: list[DockerCoordinator] = []
    databases: list[db.Database] = []

    async def start(image: str = base_image, **limits: Any) -> DockerCoordinator:
        database = await db.connect(f"sqlite:///{tmp_path / 'farm.sqlite'}", reactor)
        databases.append(database)
        provider = DockerProvider(image, reactor, instance=instance, **limits)
        coordinator = Coordinator(
            database,
            reactor,
            {"docker": BuildletType("docker", provider, max_count=2)},
            AgentClient(plain_http()),
        )
        await coordinator.start()
        port = reactor.listenTCP(
            0,
            server.Site(CoordinatorResource(coordinator, SECRET, reactor)),
            interface="127.0.0.1",
        )
        running = DockerCoordinator(
            coordinator, provider, f"http://127.0.0.1:{port.getHost().port}", port
        )
        started.append(running)
        return running

    yield start
    for running in started:
        if running.port.connected:
            await running.port.stopListening()
        await running.coordinator.stop()
    if started:
        await started[-1].provider.reap(set())
    for database in databases:
        await database.stop()


async def run(client: CoordinatorClient, name: str, *command: str) -> tuple[int | None, bytes]:
    """Run ``command`` on buildlet ``name`` through ``client``; its exit code and all its output."""
    output: list[bytes] = []
    status = await client.exec(name, command[0], command[1:], on_output=output.append)
    return status.exit_code, b"".join(output)


@pytest_twisted.ensureDeferred
async def test_a_docker_buildlet_runs_commands_in_its_labelled_container(
    start_docker_coordinator: StartDockerCoordinator,
    docker_client: docker.DockerClient,
    instance: str,
) -> None:
    """A lease is a running, labelled container; exec runs inside it; halt removes it."""
    running = await start_docker_coordinator()
    alice = running.client()
    name = (await alice.create("docker"))["Name"]
    container_id = await running.handle(name)
    container = docker_client.containers.get(container_id)
    assert container.status == "running"
    assert container.labels[BUILDLET_LABEL] == name
    assert container.labels[INSTANCE_LABEL] == instance

    code, cgroups = await run(alice, name, "cat", "/proc/1/cgroup")
    assert code == 0
    assert container_id.encode() in cgroups, "the command did not run in the buildlet's container"
    assert await run(alice, name, "pwd") == (0, b"/buildlet/work\n")

    await alice.destroy(name)
    with pytest.raises(NotFound):
        docker_client.containers.get(container_id)
    assert await alice.buildlets() == []


@pytest_twisted.ensureDeferred
async def test_limits_and_host_networking_are_applied_to_the_container(
    start_docker_coordinator: StartDockerCoordinator, docker_client: docker.DockerClient
) -> None:
    """cpus, memory and pids become the container's NanoCpus, Memory and PidsLimit."""
    running = await start_docker_coordinator(cpus=0.5, memory="256m", pids=64)
    name = (await running.client().create("docker"))["Name"]
    host_config = docker_client.api.inspect_container(await running.handle(name))["HostConfig"]
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["Memory"] == 256 * 1024 * 1024
    assert host_config["PidsLimit"] == 64
    assert host_config["NetworkMode"] == "host"
    assert host_config["Init"] is True


@pytest_twisted.ensureDeferred
async def test_reap_removes_only_this_instances_containers_that_no_lease_owns(
    start_docker_coordinator: StartDockerCoordinator,
    docker_client: docker.DockerClient,
    base_image: str,
) -> None:
    """Reap removes an unowned container of its instance, keeps owned and foreign ones."""
    running = await start_docker_coordinator()
    provider = running.provider
    owned = await provider.start("owned-docker-0", "s3cret", lambda handle: None)
    orphan = await provider.start("orphan-docker-1", "s3cret", lambda handle: None)
    other = DockerProvider(base_image, reactor, instance=f"{provider.instance}-other")
    foreign = await other.start("foreign-docker-2", "s3cret", lambda handle: None)
    orphan_id = json.loads(orphan.handle)["container"]
    try:
        reaped = await provider.reap({owned.handle})
        assert reaped == [f"docker buildlet orphan-docker-1 (container {orphan_id[:12]})"]
        remaining = {c.id for c in labelled(docker_client, provider.instance)}
        assert remaining == {json.loads(owned.handle)["container"]}
        assert docker_client.containers.get(json.loads(foreign.handle)["container"])
    finally:
        await other.destroy(foreign.handle)


@pytest_twisted.ensureDeferred
async def test_a_restarted_coordinator_re_adopts_a_live_docker_buildlet(
    start_docker_coordinator: StartDockerCoordinator,
) -> None:
    """After a crash, the lease is still listed and reaches the same container's files."""
    first = await start_docker_coordinator()
    alice = first.client()
    name = (await alice.create("docker"))["Name"]
    await run(alice, name, "sh", "-c", "echo kept > marker")
    container_id = await first.handle(name)
    await first.port.stopListening()  # the crash: no cleanup of any kind

    second = await start_docker_coordinator()
    alice_again = second.client()
    assert [b["Name"] for b in await alice_again.buildlets()] == [name]
    assert await second.handle(name) == container_id
    assert await run(alice_again, name, "cat", "marker") == (0, b"kept\n")


@pytest_twisted.ensureDeferred
async def test_a_missing_image_fails_clearly_and_leaves_nothing(
    start_docker_coordinator: StartDockerCoordinator,
    docker_client: docker.DockerClient,
    instance: str,
) -> None:
    """A lease of an image the engine lacks fails saying so and that nothing is pulled."""
    running = await start_docker_coordinator(image="farm-test-no-such-image:never")
    with pytest.raises(CoordinatorRequestError) as refused:
        await running.client().create("docker")
    assert "'farm-test-no-such-image:never' does not exist" in str(refused.value)
    assert "never pulls from a registry" in str(refused.value)
    assert await running.coordinator.table.all() == []
    assert labelled(docker_client, instance) == []


@pytest_twisted.ensureDeferred
async def test_an_image_without_python_fails_with_the_containers_log(
    busybox_image: str, docker_client: docker.DockerClient, instance: str
) -> None:
    """When the agent cannot start, the error quotes the container's log and it is removed."""
    provider = DockerProvider(busybox_image, reactor, instance=instance)
    handles: list[str] = []
    with pytest.raises(ProviderError, match=r"exited at start; its log: .*python3") as failed:
        await provider.start("nopython-docker-0", "s3cret", handles.append)
    assert "nopython-docker-0" in str(failed.value)
    assert len(handles) == 1
    assert labelled(docker_client, instance) == []


@pytest_twisted.ensureDeferred
async def test_destroy_is_quiet_when_the_container_is_already_gone(
    base_image: str, docker_client: docker.DockerClient, instance: str
) -> None:
    """Destroying a buildlet whose container was removed behind our back does not fail."""
    provider = DockerProvider(base_image, reactor, instance=instance)
    started = await provider.start("gone-docker-0", "s3cret", lambda handle: None)
    docker_client.containers.get(json.loads(started.handle)["container"]).remove(force=True)
    await provider.destroy(started.handle)
    await provider.destroy(started.handle)


def test_impossible_limits_are_refused_at_configuration() -> None:
    """A non-positive cpus or pids limit is a ValueError naming it, before any engine call."""
    with pytest.raises(ValueError, match="cpus must be positive"):
        DockerProvider("any", reactor, cpus=0)
    with pytest.raises(ValueError, match="pids must be at least 1"):
        DockerProvider("any", reactor, pids=0)


@pytest_twisted.ensureDeferred
async def test_a_docker_buildlet_past_its_deadline_leaves_no_container(
    start_docker_coordinator: StartDockerCoordinator, docker_client: docker.DockerClient
) -> None:
    """An agent whose coordinator never renews it again halts itself, and its container goes."""
    running = await start_docker_coordinator()
    name = (await running.client().create("docker"))["Name"]
    container_id = await running.handle(name)
    lease = await running.coordinator.table.get(name)
    assert lease is not None
    await running.port.stopListening()  # the coordinator is gone for good ...
    # ... just after its last renewal set the agent's deadline a second ahead
    await AgentClient(plain_http()).set_deadline(lease.url, lease.secret, 1)
    for _ in range(100):
        try:
            docker_client.containers.get(container_id)
        except NotFound:
            return
        await task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError("the container outlived its agent's deadline by 10 s")


async def test_a_docker_lessee_reaches_nothing_of_the_master(
    start_docker_coordinator: StartDockerCoordinator,
    docker_client: docker.DockerClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A docker buildlet runs as nobody with no capabilities and no-new-privileges; the
    master's files (here tmp_path, holding the farm database) and environment are not there."""
    monkeypatch.setenv("FARM_WORKER_PASSWORD", "the-masters-own-password")
    (tmp_path / "master.cfg").write_text("c['secret'] = 'master-cfg-secret'\n")
    running = await start_docker_coordinator()
    alice = running.client()
    name = (await alice.create("docker"))["Name"]
    config = docker_client.api.inspect_container(await running.handle(name))
    assert config["HostConfig"]["CapDrop"] == ["ALL"]
    assert config["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
    assert not config["Mounts"]
    assert not config["HostConfig"]["Binds"]
    assert config["Config"]["User"] == "65534:65534"
    assert await run(alice, name, "id", "-u") == (0, b"65534\n")
    code, status = await run(alice, name, "cat", "/proc/self/status")
    assert code == 0
    assert b"CapEff:\t0000000000000000" in status
    assert b"NoNewPrivs:\t1" in status
    outputs = {}
    for command in [*(("sh", "-c", c) for c in attacks(tmp_path).values()), ("env",)]:
        code, output = await run(alice, name, *command)
        outputs[command] = (-1 if code is None else code, output.decode(errors="replace"))
    assert_all_fail(lambda *command: outputs[command], tmp_path,
                    ["master-cfg-secret", "the-masters-own-password"])
