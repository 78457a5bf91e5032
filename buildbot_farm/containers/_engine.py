"""The Docker engine as the step sees it: async methods over blocking docker SDK calls.

Every SDK call is in a ``thd_*`` function, run on the master reactor's thread pool. Failures
come back as :class:`EngineError` with a message a person can act on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import docker
from docker.errors import APIError, ImageNotFound, NotFound
from docker.types import ContainerConfig as DockerContainerConfig
from docker.types import HostConfig
from docker.utils.socket import frames_iter

from buildbot_farm.compat.docker_api import (
    thd_attach_unlimited,
    thd_path_exists,
    thd_put_archive_owned,
)
from buildbot_farm.docker_errors import engine_errors
from buildbot_farm.thread_pool import in_thread

LABEL_PREFIX = "buildbot-farm."
LABEL_MASTER = f"{LABEL_PREFIX}master"
STDOUT, STDERR = 1, 2
ARCHIVE_CHUNK = 1 << 20
WORKER_API_VERSION = "1.41"

_T = TypeVar("_T")


class EngineError(Exception):
    """The Docker engine failed or could not be reached; the message says what to do."""


class ImageMissing(EngineError):
    """The image is not on the engine (and pulling was not allowed or failed)."""


@dataclass(frozen=True)
class ContainerConfig:
    """What a task's container is created with."""

    name: str
    image: str
    command: list[str]
    env: dict[str, str]
    workdir: str
    labels: dict[str, str]
    network: str | None
    limits: dict[str, Any]


def _explained(doing: str, host: str) -> contextlib.AbstractContextManager[None]:
    """Turn SDK and connection errors into EngineError naming what was being done."""
    return engine_errors(doing, host, EngineError, ImageMissing)


def thd_connect(docker_host: str | None) -> docker.DockerClient:
    """A client of ``docker_host`` (None: DOCKER_HOST or the local socket), checked to answer."""
    host = docker_host or "DOCKER_HOST or the local socket"
    with _explained("connecting", host):
        if docker_host is None:
            return docker.from_env(version="auto")
        return docker.DockerClient(base_url=docker_host, version="auto")


def task_host_config(config: ContainerConfig, api_version: str) -> dict[str, Any]:
    """The HostConfig of every task's container: no network but its own, no capabilities,
    no new privileges, the resource limits."""
    return dict(HostConfig(
        version=api_version,
        network_mode=config.network or "none",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        **config.limits,
    ))


def create_body(config: ContainerConfig) -> dict[str, Any]:
    """The JSON body of the engine's create call for ``config`` (the name goes in the query),
    for ``farm-remote.pyz container-task`` to send to a worker's engine: the same container
    as :func:`thd_create` makes, for API ``WORKER_API_VERSION`` and later."""
    return dict(DockerContainerConfig(
        WORKER_API_VERSION, config.image, config.command, environment=config.env,
        working_dir=config.workdir, labels=config.labels, stop_timeout=1,
        host_config=task_host_config(config, WORKER_API_VERSION),
    ))


def thd_create(client: docker.DockerClient, config: ContainerConfig, pull: bool) -> str:
    """Create the container (pulling the image first only if ``pull``); return its id."""
    api = client.api
    host_config = task_host_config(config, api.api_version)

    def create() -> str:
        created = api.create_container(
            config.image,
            config.command,
            name=config.name,
            environment=config.env,
            working_dir=config.workdir,
            labels=config.labels,
            host_config=host_config,
            stop_timeout=1,
        )
        return str(created["Id"])

    with _explained(f"creating the container from {config.image}", api.base_url):
        try:
            return create()
        except ImageNotFound as error:
            if not pull:
                raise ImageMissing(
                    f"the image {config.image!r} is not on the Docker engine at {api.base_url}."
                    " ContainerTask never pulls from a registry unless pull=True: build or load"
                    " the image on that engine, or set pull=True"
                ) from error
        api.pull(config.image)
        return create()


def thd_put_archive(
    client: docker.DockerClient, cid: str, path: str, data: Iterable[bytes]
) -> None:
    """Stream the tar ``data`` into the container at ``path``, owned by the container's user."""
    api = client.api
    with _explained(f"copying into the container at {path}", api.base_url):
        # docker-py's put_archive has no copyUIDGID parameter (see compat.docker_api).
        thd_put_archive_owned(api, cid, path, data)


def thd_run(
    client: docker.DockerClient, cid: str, output: Callable[[int, bytes], None]
) -> int:
    """Start the container, pass each piece of its output to ``output``; return its exit status.

    ``output(stream, data)`` is called in this thread with STDOUT or STDERR.
    """
    api = client.api
    with _explained("running the task", api.base_url):
        # attach's own wrapper keeps the client's read timeout, which would cut a quiet task.
        response, sock = thd_attach_unlimited(api, cid)
        try:
            api.start(cid)
            for stream, data in frames_iter(sock, False):
                if data:
                    output(stream, data)
        finally:
            response.close()
        status = api.wait(cid, timeout=None)
        return int(status["StatusCode"])


def thd_kill(client: docker.DockerClient, cid: str) -> None:
    """Kill the container; quiet if it already stopped or is gone."""
    api = client.api
    with _explained("stopping the task", api.base_url):
        try:
            api.kill(cid)
        except (NotFound, APIError) as error:
            if not isinstance(error, NotFound) and "is not running" not in str(error):
                raise


def thd_changes(client: docker.DockerClient, cid: str) -> list[tuple[str, int]]:
    """The container's change list: (path, kind) with kind 0 changed, 1 added, 2 deleted."""
    api = client.api
    with _explained("listing the files the task changed", api.base_url):
        return [(c["Path"], int(c["Kind"])) for c in api.diff(cid) or []]


def thd_get_archive(
    client: docker.DockerClient, cid: str, path: str, consume: Callable[[Iterator[bytes]], _T],
    missing_ok: bool = False,
) -> _T:
    """Stream the tar of ``path`` in the container through ``consume`` (in this thread); with
    ``missing_ok`` a path the container does not have is an empty stream, not an error."""
    api = client.api
    with _explained(f"copying {path} out of the container", api.base_url):
        try:
            chunks, _stat = api.get_archive(cid, path, chunk_size=ARCHIVE_CHUNK)
        except NotFound:
            if not missing_ok or not thd_path_exists(api, cid, "/"):
                raise
            chunks = iter(())
        return consume(chunks)


def thd_all_absent(client: docker.DockerClient, cid: str, paths: Iterable[str]) -> bool:
    """Whether none of ``paths`` exists in the container."""
    api = client.api
    with _explained("looking for the mapped paths in the container", api.base_url):
        return not any(thd_path_exists(api, cid, path) for path in paths)


def thd_create_network(client: docker.DockerClient, name: str, labels: dict[str, str]) -> str:
    """Create an internal (no outside route) bridge network; return its id."""
    api = client.api
    with _explained(f"creating the task's network {name}", api.base_url):
        created = api.create_network(name, driver="bridge", internal=True, labels=labels)
        return str(created["Id"])


def thd_remove(client: docker.DockerClient, cid: str | None, network: str | None) -> None:
    """Remove the container (forced) and then the network; quiet about ones already gone."""
    api = client.api
    with _explained("removing the task's container", api.base_url):
        if cid is not None:
            with contextlib.suppress(NotFound):
                api.remove_container(cid, force=True, v=True)
        if network is not None:
            with contextlib.suppress(NotFound):
                api.remove_network(network)


def thd_reap(client: docker.DockerClient, master: str) -> tuple[int, int]:
    """Remove every container and network labelled as this master's; return the counts."""
    api = client.api
    selector = {"label": f"{LABEL_MASTER}={master}"}
    with _explained("removing leftover containers", api.base_url):
        containers = api.containers(all=True, filters=selector)
        for found in containers:
            with contextlib.suppress(NotFound):
                api.remove_container(found["Id"], force=True, v=True)
        networks = api.networks(filters=selector)
        for network in networks:
            with contextlib.suppress(NotFound):
                api.remove_network(network["Id"])
    return len(containers), len(networks)


class Engine:
    """One Docker engine, used from the master's reactor; each call runs in its thread pool."""

    def __init__(self, reactor: Any, client: docker.DockerClient) -> None:
        self.reactor = reactor
        self.client = client

    @classmethod
    async def connect(cls, reactor: Any, docker_host: str | None) -> Engine:
        """Connect to ``docker_host`` (None: the master's default engine)."""
        client = await in_thread(reactor, thd_connect, docker_host)
        return cls(reactor, client)

    @property
    def url(self) -> str:
        """The engine's address, for messages."""
        return str(self.client.api.base_url)

    async def call(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run ``function(client, *args)`` in the reactor's thread pool."""
        return await in_thread(self.reactor, function, self.client, *args)


