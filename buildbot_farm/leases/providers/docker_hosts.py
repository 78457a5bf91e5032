"""The docker provider over several Docker hosts: placement, health checks, lost hosts.

A new buildlet goes on the host with the most free capacity (``max_count`` less the
buildlets placed there) among the hosts that answer. Every ``check_interval`` seconds each
engine is pinged (``PING_TIMEOUT`` seconds at most), and on each host whose engine answers,
every agent's port is connected to (``AGENT_TIMEOUT`` seconds at most, all at once). A host
is marked down when its ping fails, or when none of its agents accepts a connection (its
agents' ports blocked, its network half broken): it is then skipped by placement, shown on
/status with the reason, and its buildlets are handed to the watcher (the coordinator),
which marks their leases lost with the host. A new buildlet's agent is connected to before
the buildlet is handed out; one that does not accept marks its host down, and the buildlet
is started again on another host. Pinging goes on: a host whose engine answers again has
the containers it still holds from before reaped (they are no lease's any more, so nothing
is counted twice) and takes new buildlets again.

Handles are JSON ``{"pool": POOL, "host": LABEL, "container": ID, "buildlet": NAME,
"agent": URL}`` (``agent`` once the agent is ready).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from docker.errors import DockerException
from requests import RequestException
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python import log

from buildbot_farm.docker_engines import TLSFiles, engine_api
from buildbot_farm.leases.providers.base import BuildletProvider, ProviderError, StartedBuildlet
from buildbot_farm.leases.providers.docker import DockerProvider
from buildbot_farm.thread_pool import in_thread

# A host is declared down after one failed ping: with these, at most ~6 s after its engine
# stops answering (3 s between checks, 3 s for a ping to time out). A build that needs a
# retry then waits for that much, not for a TCP timeout of minutes.
CHECK_INTERVAL = 3.0
PING_TIMEOUT = 3.0
# An agent whose port does not accept a connection within this is silent.
AGENT_TIMEOUT = 3.0

LostWatcher = Callable[[list[str], str], object]


@dataclass
class HostEngine:
    """One host of a pool as it runs: its engine, its buildlets, whether it answers."""

    label: str
    url: str
    max_count: int
    provider: DockerProvider
    tls: TLSFiles | None = None
    placed: dict[str, str | None] = field(default_factory=dict)  # buildlet -> container
    agents: dict[str, str] = field(default_factory=dict)  # buildlet -> its agent's URL
    down: str | None = None  # why it is down, None when it answers
    down_since: float | None = None
    _pinger: Any = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """The host's address, where its agents listen: the URL's host, or loopback."""
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def free(self) -> int:
        """Buildlets this host can still take."""
        return self.max_count - len(self.placed)

    def status(self) -> dict[str, Any]:
        """The host on /status."""
        return {
            "host": self.label, "url": self.url, "up": self.down is None,
            "reason": self.down, "down_since": self.down_since,
            "buildlets": len(self.placed), "max_count": self.max_count,
        }

    def thd_ping(self) -> str | None:
        """Ping the engine (blocking); None when it answers, else why not."""
        try:
            if self._pinger is None:
                self._pinger = engine_api(self.url, self.tls, timeout=PING_TIMEOUT)
            self._pinger.ping()
            return None
        except (DockerException, RequestException, OSError) as e:
            if self._pinger is not None:
                self._pinger.close()
            self._pinger = None
            return f"its Docker engine at {self.url} does not answer ({type(e).__name__}: {e})"


class DockerHostsProvider(BuildletProvider):
    """Places each buildlet on one of ``hosts`` (see the module's docstring)."""

    kind = "docker"

    def __init__(
        self, hosts: Sequence[HostEngine], reactor: Any, pool: str,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.hosts = {host.label: host for host in hosts}
        self._reactor = reactor
        self._pool = pool
        self._check_interval = check_interval
        self._watcher: LostWatcher | None = None
        self._loop: task.LoopingCall | None = None

    def _place(self, name: str) -> HostEngine:
        up = [host for host in self.hosts.values() if host.down is None and host.free > 0]
        if not up:
            states = "; ".join(
                f"{host.label} down: {host.down}" if host.down is not None
                else f"{host.label} full ({len(host.placed)}/{host.max_count})"
                for host in self.hosts.values()
            )
            raise ProviderError(f"no Docker host of pool {self._pool} can take {name}: {states}")
        host = max(up, key=lambda host: host.free)  # ties: the first host in the config
        host.placed[name] = None
        return host

    async def start(
        self, name: str, secret: str, on_handle: Callable[[str], object]
    ) -> StartedBuildlet:
        """Start the buildlet on the host with the most free capacity that answers; if its
        agent cannot be reached there, mark that host down and start it on another."""
        for _ in self.hosts:
            host = self._place(name)
            started = await self._start_on(host, name, secret, on_handle)
            silent = await self._silent_agents({name: started.url})
            if not silent:
                host.agents[name] = started.url
                return started
            host.placed.pop(name, None)
            await host.provider.destroy(json.dumps({"container": json.loads(started.handle)[
                "container"]}))
            await self._mark_down(host, self._agents_reason(host, silent, 1))
        raise ProviderError(f"no Docker host of pool {self._pool} could start {name}: "
                            "the agents of every host tried are unreachable")

    async def _start_on(
        self, host: HostEngine, name: str, secret: str, on_handle: Callable[[str], object]
    ) -> StartedBuildlet:
        def record(handle: str) -> object:
            container = json.loads(handle)["container"]
            host.placed[name] = container
            return on_handle(self._handle(host.label, container, name))

        try:
            started = await host.provider.start(name, secret, record)
        except BaseException:
            host.placed.pop(name, None)
            raise
        container = json.loads(started.handle)["container"]
        handle = self._handle(host.label, container, name, agent=started.url)
        return StartedBuildlet(url=started.url, handle=handle)

    async def destroy(self, handle: str) -> None:
        """Remove the buildlet's container; on a host that is down, leave it to the reap
        that follows the host's return."""
        data = json.loads(handle)
        host = self.hosts.get(data.get("host"))
        if host is None:
            log.msg(f"docker hosts: pool {self._pool} has no host {data.get('host')!r} now; "
                    f"container {str(data.get('container'))[:12]} is left where it is")
            return
        host.placed.pop(str(data.get("buildlet")), None)
        host.agents.pop(str(data.get("buildlet")), None)
        if host.down is not None:
            return
        await host.provider.destroy(json.dumps({"container": data["container"]}))

    async def reap(self, known_handles: set[str]) -> list[str]:
        """Count the known buildlets per host, and remove each answering host's containers
        of this pool that no lease owns."""
        for handle in known_handles:
            data = json.loads(handle) if handle else {}
            if data.get("pool") != self._pool:
                continue  # another docker pool's buildlet
            host = self.hosts.get(str(data.get("host")))
            if host is not None and data.get("buildlet"):
                host.placed[data["buildlet"]] = data.get("container")
                if data.get("agent"):
                    host.agents[data["buildlet"]] = data["agent"]
        reaped = []
        for host in self.hosts.values():
            try:
                reaped += await self._reap_host(host)
            except ProviderError as e:
                await self._mark_down(host, str(e))
        return reaped

    async def _reap_host(self, host: HostEngine) -> list[str]:
        known = {json.dumps({"container": c}) for c in host.placed.values() if c}
        return [f"{what} on host {host.label}" for what in await host.provider.reap(known)]

    def watch(self, lost: LostWatcher) -> None:
        """Start checking the hosts; ``lost(buildlets, reason)`` hears of a host's loss."""
        self._watcher = lost
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self._reactor
        self._loop.start(self._check_interval, now=False).addErrback(
            log.err, "docker hosts: the health check loop failed"
        )

    def unwatch(self) -> None:
        """Stop checking the hosts."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    async def check(self) -> None:
        """Ping every host at once; mark the silent ones down, bring back the answering; then
        mark down each answering host none of whose agents accepts a connection."""
        hosts = list(self.hosts.values())
        answers = await defer.gatherResults(
            [defer.ensureDeferred(in_thread(self._reactor, host.thd_ping)) for host in hosts]
        )
        for host, reason in zip(hosts, answers):
            if reason is not None and host.down is None:
                await self._mark_down(host, reason)
            elif reason is None and host.down is not None:
                await self._bring_back(host)
        probed = [host for host in hosts if host.down is None and host.agents]
        silences = await defer.gatherResults([
            defer.ensureDeferred(self._silent_agents(dict(host.agents))) for host in probed
        ])
        for host, silent in zip(probed, silences):
            # Only the buildlets still there count: one destroyed meanwhile is not a silence.
            left = set(host.agents)
            if host.down is None and left and left <= set(silent):
                await self._mark_down(host, self._agents_reason(host, silent, len(left)))

    async def _silent_agents(self, agents: Mapping[str, str]) -> dict[str, str]:
        """Of ``agents`` (buildlet -> URL), those whose port does not accept a connection
        within AGENT_TIMEOUT, each with why; all are tried at once."""
        names = list(agents)
        errors = await defer.gatherResults([self._connect(agents[name]) for name in names])
        return {name: error for name, error in zip(names, errors) if error is not None}

    def _connect(self, url: str) -> defer.Deferred[str | None]:
        """Connect to the agent at ``url`` and hang up: None, or why it failed."""
        parts = urlsplit(url)
        endpoint = HostnameEndpoint(
            self._reactor, parts.hostname or "", parts.port or 80, timeout=AGENT_TIMEOUT
        )
        connected: defer.Deferred[Any] = connectProtocol(endpoint, Protocol())
        return connected.addCallbacks(
            lambda protocol: protocol.transport.loseConnection(),
            lambda failure: failure.getErrorMessage(),
        )

    @staticmethod
    def _agents_reason(host: HostEngine, silent: Mapping[str, str], tried: int) -> str:
        example = next(iter(silent.values()))
        return (f"its buildlets' agents at {host.address} do not answer ({len(silent)} of "
                f"{tried} tried: {example}) although its Docker engine does; are their ports "
                "reachable from the master?")

    async def _mark_down(self, host: HostEngine, reason: str) -> None:
        host.down, host.down_since = reason, self._reactor.seconds()
        lost = sorted(host.placed)
        host.placed.clear()
        host.agents.clear()
        log.msg(f"docker hosts: host {host.label} of pool {self._pool} is down: {reason}; "
                f"{len(lost)} buildlet(s) lost with it")
        if lost and self._watcher is not None:
            await defer.maybeDeferred(self._watcher, lost, f"host {host.label}: {reason}")

    async def _bring_back(self, host: HostEngine) -> None:
        try:
            reaped = await self._reap_host(host)
        except ProviderError as e:
            host.down = str(e)
            return
        host.down = host.down_since = None
        log.msg(f"docker hosts: host {host.label} of pool {self._pool} answers again; "
                f"reaped {len(reaped)} leftover container(s): {', '.join(reaped) or 'none'}")

    def _handle(self, host: str, container: str, buildlet: str, agent: str | None = None) -> str:
        handle = {"pool": self._pool, "host": host, "container": container, "buildlet": buildlet}
        if agent is not None:
            handle["agent"] = agent
        return json.dumps(handle)

    def hosts_status(self) -> list[dict[str, Any]]:
        """Each host's state, for /status."""
        return [{"pool": self._pool, **host.status()} for host in self.hosts.values()]


def docker_hosts_status(coordinator: Any) -> list[dict[str, Any]]:
    """The state of every Docker host of ``coordinator``'s pools (none without one)."""
    if coordinator is None:
        return []
    providers = {buildlet_type.provider for buildlet_type in coordinator.types.values()}
    return [
        row for provider in providers if isinstance(provider, DockerHostsProvider)
        for row in provider.hosts_status()
    ]
