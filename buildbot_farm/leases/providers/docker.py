"""The ``docker`` provider: each buildlet is a container of a configured image running the agent.

The container is created, the agent and the buildlet's secret are copied into it with the
archive API, and its command (the image's ``python3`` running the agent) is started. It
shares the host's network namespace, so the agent's loopback URL, which it prints in its log
as ``BUILDLET-READY URL``, is reachable from the coordinator. Every container carries two
labels, the buildlet's name and the provider's instance: a restarted coordinator reaps the
containers of its instance that no lease owns, and leaves everything else on the engine alone.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import docker
from docker.errors import APIError, ImageNotFound, NotFound
from twisted.internet import task
from twisted.python import log

from buildbot_farm.compat.docker_api import thd_attach_unlimited
from buildbot_farm.docker_engines import TLSFiles, engine_api, output_frames, shut_down
from buildbot_farm.docker_errors import engine_errors
from buildbot_farm.leases.providers.base import (
    AGENT_START_DEADLINE,
    BuildletProvider,
    ProviderError,
    StartedBuildlet,
)
from buildbot_farm.private_dirs import remote_archive
from buildbot_farm.remote.protocol import READY_PREFIX
from buildbot_farm.remote.pyz import ARCHIVE_NAME
from buildbot_farm.thread_pool import in_thread

BUILDLET_LABEL = "buildbot_farm.buildlet"
INSTANCE_LABEL = "buildbot_farm.provider"
HOME = "/buildlet"
READY_LINE = f"{READY_PREFIX} "
POLL_INTERVAL = 0.02
REMOVAL_WAIT = 10.0
DEFAULT_USER = "65534:65534"  # nobody and nogroup, in Debian as in busybox
# The agent's whole environment besides what the image sets (PATH): nothing of the master's.
ENVIRONMENT = {"HOME": f"{HOME}/home", "TMPDIR": f"{HOME}/tmp", "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8"}


def parse_user(user: str) -> tuple[int, int]:
    """``UID:GID`` as two numbers; ValueError for anything else (names vary between images)."""
    uid, sep, gid = str(user).partition(":")
    if not (uid.isdigit() and sep and gid.isdigit()):
        raise ValueError(f"docker provider: user must be UID:GID such as 1000:1000, not {user!r}")
    return int(uid), int(gid)


class DockerProvider(BuildletProvider):
    """Runs each buildlet as a container of ``image`` on the Docker engine at ``docker_host``.

    ``docker_host`` is a Docker URL (``unix:///var/run/docker.sock``, ``tcp://HOST:2376``);
    None means the environment's (``DOCKER_HOST``, else the local socket). The image is never
    pulled: it must exist on the engine and have ``python`` (>= 3.9, found on its PATH). The agent
    runs as ``user`` (``UID:GID``, by default nobody's 65534:65534) with its work directory at
    ``/buildlet/work``, ``HOME`` ``/buildlet/home`` and ``TMPDIR`` ``/buildlet/tmp``, all that
    user's; the container gets no capabilities, no-new-privileges, nothing of the master's
    environment and no bind mount of the host's files.
    ``tls`` holds the client certificate files for a ``tcp://`` engine. The agent listens on
    ``listen_host`` in the host's network: loopback for this machine's engine, the host's
    own address for a remote one (the coordinator reaches it there; its secret guards it).
    ``instance`` names this provider in the containers' labels; give every coordinator on an
    engine its own, since :meth:`reap` removes each container with it that no lease owns.
    ``labels`` are added to every container. ``cpus`` (may be fractional), ``memory`` (bytes,
    or a string like ``"512m"``) and ``pids`` limit each container. With ``prestart_worker``
    (the default) each agent keeps a ``python`` process with buildbot-worker imported, for
    FarmLatentWorker to hand its configuration at attach (an image without buildbot-worker
    just logs that process's ImportError, and workers start the normal way).
    """

    kind = "docker"

    def __init__(
        self,
        image: str,
        reactor: Any,
        docker_host: str | None = None,
        instance: str = "default",
        labels: Mapping[str, str] | None = None,
        cpus: float | None = None,
        memory: int | str | None = None,
        pids: int | None = None,
        python: str = "python3",
        start_timeout: float = 30.0,
        agent_arguments: Sequence[str] = (),
        prestart_worker: bool = True,
        user: str = DEFAULT_USER,
        tls: TLSFiles | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        self._uid, self._gid = parse_user(user)
        if cpus is not None and cpus <= 0:
            raise ValueError(f"docker provider: cpus must be positive, not {cpus}")
        if pids is not None and pids < 1:
            raise ValueError(f"docker provider: pids must be at least 1, not {pids}")
        self.image = image
        self.instance = instance
        self._agent_arguments = list(agent_arguments)
        if prestart_worker:
            self._agent_arguments += ["--prestart-worker", python]
        self._reactor = reactor
        self._docker_host = docker_host
        self._tls = tls
        self._listen_host = listen_host
        self._labels = {**(labels or {}), INSTANCE_LABEL: instance}
        self._limits: dict[str, Any] = {
            "nano_cpus": round(cpus * 1e9) if cpus is not None else None,
            "mem_limit": memory,
            "pids_limit": pids,
        }
        self._python = python
        self._start_timeout = start_timeout
        self._client: docker.APIClient | None = None
        self._client_lock = threading.Lock()

    @property
    def _engine(self) -> str:
        return self._docker_host or "DOCKER_HOST, else the local socket"

    async def start(
        self, name: str, secret: str, on_handle: Callable[[str], object]
    ) -> StartedBuildlet:
        """Create the container, copy the agent in, start it and wait for its URL."""
        container = await in_thread(self._reactor, self.thd_create, name)
        handle = json.dumps({"container": container})
        try:
            recorded = on_handle(handle)
            if inspect.isawaitable(recorded):
                await recorded
            output = await in_thread(self._reactor, self.thd_start, container, secret)
            try:
                url = await self._wait_ready(name, container, output)
            finally:
                output.close()
        except BaseException:
            try:
                await self.destroy(handle)
            except ProviderError as e:
                log.msg(f"docker provider: {e}; the next reap will remove the container")
            raise
        return StartedBuildlet(url=url, handle=handle)

    def thd_create(self, name: str) -> str:
        """Create (but do not start) the buildlet's container (blocking); return its id."""
        api = self._api()
        with self._engine_errors(f"cannot create the container for {name}"):
            host_config = api.create_host_config(
                network_mode="host",
                # docker-init as PID 1 reaps the orphans builds leave; the agent would not.
                init=True,
                # An agent that halts itself at its deadline takes its container with it.
                auto_remove=True,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                **self._limits,
            )
            try:
                created = api.create_container(
                    self.image,
                    # The entrypoint, not the command, so that an image's own one cannot wrap it.
                    entrypoint=[
                        self._python, f"{HOME}/{ARCHIVE_NAME}", "agent",
                        "--listen", f"{self._listen_host}:0",
                        "--workdir", f"{HOME}/work",
                        "--secret-file", f"{HOME}/secret",
                        "--deadline", str(AGENT_START_DEADLINE),
                        *self._agent_arguments,
                    ],
                    user=f"{self._uid}:{self._gid}",
                    environment=ENVIRONMENT,
                    working_dir=HOME,
                    labels={**self._labels, BUILDLET_LABEL: name},
                    host_config=host_config,
                )
            except ImageNotFound:
                raise ProviderError(
                    f"image {self.image!r} does not exist on the Docker engine ({self._engine}); "
                    f"the docker "
                    f"provider never pulls from a registry: build, load or import it there first"
                ) from None
        return str(created["Id"])

    def thd_start(self, container: str, secret: str) -> _Output:
        """Copy the agent and ``secret`` into the container and start it (blocking).

        Returns its output as it comes: attached before the start, so that it is kept even
        when the container exits at once and the engine removes it (``auto_remove``).
        """
        api = self._api()
        with self._engine_errors(f"cannot start container {container[:12]}"):
            api.put_archive(
                container, "/",
                _home_archive(secret, self._reactor.seconds(), self._uid, self._gid),
            )
            output = _Output(*thd_attach_unlimited(api, container))
            api.start(container)
        return output

    async def _wait_ready(self, name: str, container: str, attached: _Output) -> str:
        deadline = self._reactor.seconds() + self._start_timeout
        while True:
            running = not attached.ended.is_set() or await in_thread(
                self._reactor, self.thd_running, container
            )
            output = attached.text()
            for line in output.splitlines():
                if line.startswith(READY_LINE):
                    return line[len(READY_LINE):].strip()
            if not running:
                raise ProviderError(
                    f"the buildlet agent for {name} exited at start; its log: {_tail(output)}"
                )
            if self._reactor.seconds() > deadline:
                raise ProviderError(
                    f"the buildlet agent for {name} did not start within "
                    f"{self._start_timeout:g} s; its log: {_tail(output)}"
                )
            await task.deferLater(self._reactor, POLL_INTERVAL, lambda: None)

    def thd_running(self, container: str) -> bool:
        """Whether the container runs (blocking); False once it is gone."""
        api = self._api()
        with self._engine_errors(f"cannot read the state of container {container[:12]}"):
            try:
                return bool(api.inspect_container(container)["State"]["Running"])
            except NotFound:  # it exited, and the engine removed it (auto_remove)
                return False

    async def destroy(self, handle: str) -> None:
        """Remove the buildlet's container (killing it); quiet when it is already gone."""
        await in_thread(self._reactor, self.thd_remove, json.loads(handle)["container"])

    def thd_remove(self, container: str) -> None:
        """Force-remove ``container`` and its anonymous volumes, unless gone (blocking)."""
        api = self._api()
        with self._engine_errors(f"cannot remove container {container[:12]}"):
            try:
                api.remove_container(container, v=True, force=True)
            except NotFound:
                return
            except APIError as e:
                if e.status_code == 409 and "already in progress" in str(e.explanation):
                    self._thd_wait_removed(api, container)  # the engine's own (auto_remove)
                    return
                raise

    def _thd_wait_removed(self, api: docker.APIClient, container: str) -> None:
        """Wait (blocking, a few seconds at most) until the engine has removed ``container``."""
        deadline = time.monotonic() + REMOVAL_WAIT
        while time.monotonic() < deadline:
            try:
                api.inspect_container(container)
            except NotFound:
                return
            time.sleep(POLL_INTERVAL)

    async def reap(self, known_handles: set[str]) -> list[str]:
        """Remove this instance's containers whose handles are not in ``known_handles``."""
        known = {json.loads(h)["container"] for h in known_handles if h}
        return await in_thread(self._reactor, self.thd_reap, known)

    def thd_reap(self, known: set[str]) -> list[str]:
        """The blocking part of :meth:`reap`."""
        api = self._api()
        with self._engine_errors("cannot list the buildlet containers"):
            containers = api.containers(
                all=True, filters={"label": f"{INSTANCE_LABEL}={self.instance}"}
            )
        reaped = []
        for container in containers:
            if container["Id"] in known:
                continue
            self.thd_remove(container["Id"])
            name = (container.get("Labels") or {}).get(BUILDLET_LABEL, "unknown")
            reaped.append(f"docker buildlet {name} (container {container['Id'][:12]})")
        return reaped

    def _api(self) -> docker.APIClient:
        """The engine's client, made on first use: making it asks the engine its version."""
        with self._client_lock:
            if self._client is None:
                with self._engine_errors("cannot connect to the Docker engine"):
                    self._client = engine_api(self._docker_host, self._tls)
            return self._client

    def _engine_errors(self, doing: str) -> contextlib.AbstractContextManager[None]:
        """Turn the SDK's errors into ProviderErrors that say what failed, why, and where."""
        return engine_errors(doing, self._engine, ProviderError)


class _Output:
    """A container's output, collected from its attach stream by a daemon thread."""

    def __init__(self, response: Any, sock: Any) -> None:
        self._response = response
        self._sock = sock
        self._chunks: list[bytes] = []
        self.ended = threading.Event()
        threading.Thread(target=self._read, name="buildlet-output", daemon=True).start()

    def _read(self) -> None:
        try:
            for _stream, chunk in output_frames(self._sock):
                self._chunks.append(chunk)
        except Exception:  # closed by close(), or the engine went away
            pass
        finally:
            self.ended.set()

    def text(self) -> str:
        """The output so far."""
        return b"".join(list(self._chunks)).decode(errors="replace")

    def close(self) -> None:
        """Stop reading (the agent is ready, or gave up on)."""
        shut_down(self._sock)
        with contextlib.suppress(Exception):
            self._response.close()


def _home_archive(secret: str, mtime: float, uid: int, gid: int) -> bytes:
    """A tar of ``HOME`` for ``/``: the agent, the secret and the directories the user owns."""
    home = HOME.lstrip("/")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for directory, owner, mode in (
            (home, 0, 0o755), (f"{home}/work", uid, 0o700), (f"{home}/home", uid, 0o700),
            (f"{home}/tmp", uid, 0o700),
        ):
            entry = tarfile.TarInfo(directory)
            entry.type, entry.mode, entry.mtime = tarfile.DIRTYPE, mode, int(mtime)
            entry.uid, entry.gid = owner, (gid if owner else 0)
            tar.addfile(entry)
        for path, data, mode, owner in (
            (f"{home}/{ARCHIVE_NAME}", remote_archive().read_bytes(), 0o644, 0),
            (f"{home}/secret", secret.encode(), 0o400, uid),
        ):
            entry = tarfile.TarInfo(path)
            entry.size, entry.mode, entry.mtime = len(data), mode, int(mtime)
            entry.uid, entry.gid = owner, (gid if owner else 0)
            tar.addfile(entry, io.BytesIO(data))
    return archive.getvalue()


def _tail(output: str, lines: int = 10) -> str:
    return " | ".join(output.splitlines()[-lines:]) or "(empty)"
