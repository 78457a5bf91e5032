"""The coordinator as master.cfg describes it: ``util.FarmCoordinator`` and ``util.BuildletPool``.

Both are plain, frozen descriptions checked by ``problems()``; FarmService turns them into
a running :class:`~buildbot_farm.leases.coordinator.Coordinator`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buildbot_farm.config_checks import checked_keywords
from buildbot_farm.config_checks.values import is_positive, is_whole
from buildbot_farm.leases.agent_client import AgentClient
from buildbot_farm.leases.docker_hosts import DockerHost, hosts_problems
from buildbot_farm.leases.model import TYPE_PATTERN, ExpiryPolicy
from buildbot_farm.leases.pools import BuildletType
from buildbot_farm.leases.preemption import preemption_problems
from buildbot_farm.leases.providers import BuildletProvider, ProcessProvider
from buildbot_farm.leases.providers.isolation import SANDBOXES, default_root
from buildbot_farm.leases.providers.reverse import ReverseProvider
from buildbot_farm.secret_values import SecretRenderer, literal_problem

PROVIDERS = ("process", "docker", "reverse")
USER_ID = re.compile(r"^[0-9]+:[0-9]+$")
ON_STOP = ("keep", "halt")
MIN_SECRET_LENGTH = 16


@checked_keywords("util.BuildletPool")
@dataclass(frozen=True)
class BuildletPool:
    """A buildlet type users can lease: ``util.BuildletPool("local", max_count=4, warm=1)``.

    ``provider`` is ``"process"`` (the agent as a local process, the default),
    ``"docker"`` (one container per buildlet from ``image``, with optional ``cpus``,
    ``memory`` such as ``"2g"`` and ``pids`` limits) or ``"reverse"`` (hosts that join
    with ``buildbot-farm agent --register``; ``warm`` does not apply). ``preemption``
    (``util.GCEPreemption(url=...)`` and the like, see docs/leases.md) makes each agent
    watch for its host's preemption (process and docker providers).

    Isolation (docs/leases.md has each provider's trust model): ``run_as`` is the user the
    lessees' commands run as: for ``process``, an unprivileged user of this machine the
    agent becomes (the master must run as root; None keeps the master's user); for
    ``docker``, the container's user (a name in the image or ``UID:GID``; default
    ``65534:65534``, nobody). ``sandbox`` (process only) is ``"auto"`` (bubblewrap when
    installed), ``"bwrap"`` (required) or ``"none"``. ``buildlet_dir`` (process only) is
    where the pool's buildlets live; by default a directory of the farm in the system's
    temporary directory, never inside the master's basedir.

    ``hosts`` (docker only) spreads the pool over several Docker engines, each a
    ``util.DockerHost(url, tls=util.DockerTLS(...), max_count=N)``: a new buildlet goes on
    the answering host with the most free capacity, and a host that stops answering is
    marked down, its leases lost (docs/scaling.md). Without it, the pool uses the master's
    own engine (``DOCKER_HOST``, else the local socket).
    """

    name: str
    provider: str = "process"
    max_count: int = 4
    warm: int = 0
    image: str | None = None
    cpus: float | None = None
    memory: str | None = None
    pids: int | None = None
    preemption: Any = None
    run_as: str | None = None
    sandbox: str = "auto"
    buildlet_dir: str | None = None
    hosts: Sequence[DockerHost] = ()

    def problems(self) -> list[str]:
        """What is wrong with this pool, each naming its argument."""
        found = []
        if not isinstance(self.name, str) or not TYPE_PATTERN.match(self.name):
            found.append(
                f"BuildletPool name {self.name!r} must be lower-case letters, digits, '.', '_', '-'"
            )
        if self.provider not in PROVIDERS:
            found.append(
                f"BuildletPool {self.name}: provider {self.provider!r} is not one of "
                f"{', '.join(PROVIDERS)}"
            )
        if not is_whole(self.max_count) or self.max_count < 1:
            found.append(f"BuildletPool {self.name}: max_count must be >= 1")
        elif not is_whole(self.warm) or not 0 <= self.warm <= self.max_count:
            found.append(f"BuildletPool {self.name}: warm must be between 0 and max_count")
        if self.provider == "reverse" and self.warm:
            found.append(f"BuildletPool {self.name}: a reverse pool cannot keep warm buildlets")
        if self.provider == "docker" and not self.image:
            found.append(f"BuildletPool {self.name}: the docker provider needs image=")
        found += self._isolation_problems()
        found += hosts_problems(self.hosts, self.provider, f"BuildletPool {self.name}")
        found += preemption_problems(self.preemption, f"BuildletPool {self.name}")
        if self.provider == "reverse" and self.preemption is not None:
            found.append(
                f"BuildletPool {self.name}: preemption works with the process and docker "
                f"providers only; a reverse pool's hosts start their own agents"
            )
        return found


    def _isolation_problems(self) -> list[str]:
        found = []
        if self.run_as is not None and (not isinstance(self.run_as, str) or not self.run_as):
            found.append(f"BuildletPool {self.name}: run_as must be a user name")
        if self.sandbox not in SANDBOXES:
            found.append(
                f"BuildletPool {self.name}: sandbox {self.sandbox!r} is not one of "
                f"{', '.join(SANDBOXES)}"
            )
        elif self.sandbox != "auto" and self.provider != "process":
            found.append(f"BuildletPool {self.name}: sandbox= applies to the process provider")
        if self.buildlet_dir is not None and self.provider != "process":
            found.append(f"BuildletPool {self.name}: buildlet_dir= applies to the process provider")
        if self.provider == "docker" and isinstance(self.run_as, str) and not USER_ID.match(
            self.run_as
        ):
            found.append(
                f"BuildletPool {self.name}: a docker pool's run_as is UID:GID such as "
                f"'1000:1000', not {self.run_as!r}"
            )
        if self.run_as is not None and self.provider == "reverse":
            found.append(
                f"BuildletPool {self.name}: run_as= does not apply to a reverse pool: its "
                f"hosts start their own agents (as the user they choose)"
            )
        return found


@checked_keywords("util.FarmCoordinator")
@dataclass(frozen=True)
class FarmCoordinator:
    """The coordinator FarmService runs: ``util.FarmCoordinator(secret=..., pools=[...])``.

    ``secret`` is what users' keys derive from (``buildbot-farm key user-NAME``): a string
    of at least 16 characters, or a secret rendered with the master's secret providers at
    (re)config (``util.Secret("farm-coordinator-secret")``, ``util.Interpolate(...)``).
    Leases end ``idle_timeout`` seconds after their last use or ``max_lifetime`` after they
    began; expired ones are swept every ``sweep_interval`` seconds. ``on_stop`` says what
    stopping the master does to the buildlets: ``"keep"`` (the default) leaves them running
    for the next start to re-adopt (each agent halts itself ``agent_grace`` seconds after its
    lease's expiry if none does), ``"halt"`` destroys them all.
    """

    secret: Any = field(repr=False)
    pools: Sequence[BuildletPool] = field(default_factory=lambda: (BuildletPool("local"),))
    idle_timeout: float = 30 * 60
    max_lifetime: float = 12 * 60 * 60
    sweep_interval: float = 30.0
    on_stop: str = "keep"

    def problems(self) -> list[str]:
        """What is wrong with this coordinator, each naming its argument."""
        found = []
        problem = literal_problem(self.secret, "FarmCoordinator: secret", MIN_SECRET_LENGTH)
        if problem:
            found.append(problem)
        names = [pool.name for pool in self.pools]
        if not names:
            found.append("FarmCoordinator: pools must name at least one BuildletPool")
        if len(set(names)) != len(names):
            found.append(f"FarmCoordinator: pool names repeat: {names}")
        for pool in self.pools:
            found += pool.problems() if isinstance(pool, BuildletPool) else [
                f"FarmCoordinator: pools must be BuildletPool objects, not {pool!r}"
            ]
        for name in ("idle_timeout", "max_lifetime", "sweep_interval"):
            value = getattr(self, name)
            if not is_positive(value):
                found.append(f"FarmCoordinator: {name} must be a number of seconds > 0")
        if self.on_stop not in ON_STOP:
            found.append(
                f"FarmCoordinator: on_stop must be 'keep' (leave the buildlets for the next "
                f"start) or 'halt' (destroy them), not {self.on_stop!r}"
            )
        return found

    async def with_secrets(self, secrets: SecretRenderer) -> FarmCoordinator:
        """This coordinator with its secret rendered (see ``buildbot_farm.secret_values``)."""
        secret = await secrets.text(self.secret, "FarmCoordinator: secret", MIN_SECRET_LENGTH)
        pools = []
        for pool in self.pools:
            where = f"BuildletPool {pool.name}"
            hosts = [await host.with_secrets(secrets, where) for host in pool.hosts]
            pools.append(dataclasses.replace(pool, hosts=tuple(hosts)) if hosts else pool)
        return dataclasses.replace(self, secret=secret, pools=tuple(pools))

    @property
    def agent_grace(self) -> float:
        """Seconds an agent outlives its lease's expiry unrenewed: twice the time between
        sweeps (which renew it) and 5 s more, so that no late sweep lets one halt itself."""
        return 2 * self.sweep_interval + 5

    @property
    def policy(self) -> ExpiryPolicy:
        """The lease expiry policy."""
        return ExpiryPolicy(idle_timeout=self.idle_timeout, max_lifetime=self.max_lifetime)

    def buildlet_types(
        self, state_dir: Path, reactor: Any, agents: AgentClient, owner: str
    ) -> dict[str, BuildletType]:
        """The running form of the pools; ``state_dir`` is the master's basedir (or the
        standalone coordinator's state directory), which process buildlets never see.

        ``owner`` names this coordinator (the master's name): docker buildlets carry it in
        their labels, so coordinators sharing an engine never reap each other's.
        """
        types = {}
        for pool in self.pools:
            provider = _provider(pool, state_dir, reactor, agents, f"{owner}/{pool.name}")
            types[pool.name] = BuildletType(pool.name, provider, pool.max_count, pool.warm)
        return types


def _provider(
    pool: BuildletPool, state_dir: Path, reactor: Any, agents: AgentClient, instance: str
) -> BuildletProvider:
    agent_arguments = pool.preemption.agent_arguments() if pool.preemption else []
    if pool.provider == "reverse":
        return ReverseProvider(agents)
    if pool.provider == "docker":
        return _docker_provider(pool, state_dir, reactor, agent_arguments, instance)
    root = Path(pool.buildlet_dir) if pool.buildlet_dir else default_root(state_dir, pool.name)
    return ProcessProvider(
        root, reactor, agent_arguments=agent_arguments, run_as=pool.run_as,
        sandbox=pool.sandbox, protected=[state_dir],
    )


def _docker_provider(
    pool: BuildletPool, state_dir: Path, reactor: Any, agent_arguments: list[str], instance: str
) -> BuildletProvider:
    from buildbot_farm.leases.providers.docker import DEFAULT_USER, DockerProvider
    from buildbot_farm.leases.providers.docker_hosts import DockerHostsProvider, HostEngine

    image = pool.image
    assert image is not None, "problems() requires an image for docker pools"

    def provider(url: str | None = None, **remote: Any) -> DockerProvider:
        return DockerProvider(
            image, reactor, docker_host=url, instance=instance, cpus=pool.cpus,
            memory=pool.memory, pids=pool.pids, agent_arguments=agent_arguments,
            user=pool.run_as or DEFAULT_USER, **remote,
        )

    if not pool.hosts:
        return provider()
    engines = []
    for host in pool.hosts:
        tls = host.tls.files(state_dir / "docker-tls" / pool.name / host.label) if (
            host.tls is not None
        ) else None
        engines.append(HostEngine(
            host.label, host.url, host.max_count, tls=tls,
            provider=provider(host.url, tls=tls, listen_host=host.address),
        ))
    return DockerHostsProvider(engines, reactor, pool.name)
