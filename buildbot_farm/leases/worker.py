"""``worker.FarmLatentWorker``: a Buildbot latent worker on a leased buildlet.

``start_instance`` leases a buildlet and runs ``buildbot-worker`` on it through the
coordinator's proxy, as one exec that lasts as long as the worker: when the buildlet is
halted, the worker goes with it. While substantiated, a keepalive renews the lease.
``stop_instance`` halts the buildlet, once per start. Reconfiguring a live worker keeps its
lease and keepalive. The name of the leased buildlet is kept in the master's database
(Buildbot's object state), so a master that starts again after a crash releases the buildlet
its worker held before. On a buildlet whose agent keeps a pre-started worker
(``--prestart-worker``), the exec hands it the configuration instead
(``buildbot_farm.remote.handoff``); the master's log says which way each worker started.
A worker alone on its builder starts on the build request (``leases.request_start``).

When the keepalive finds the buildlet's host being preempted (its pool has a
``preemption=`` detector), the worker goes into Buildbot's quarantine (no new builds for
``PREEMPTION_QUARANTINE`` seconds or more), gives its running build the reason in the
property ``farm_preempted``, and releases the buildlet, which ends that build RETRY.

When the keepalive finds the lease gone (its buildlet was lost with its host, most often:
the coordinator says "lost with host build1"), the worker gives its running build the
reason in the property ``farm_lost`` and disconnects the worker, which ends that build
RETRY; Buildbot then substantiates again, on a host that answers. A worker left running on
the lost buildlet that reconnects later is refused (its exec's ``FARM_BUILDLET`` names a
buildlet this worker no longer holds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from buildbot import config
from buildbot.worker.latent import AbstractLatentWorker
from twisted.internet import defer, task
from twisted.python import failure, log

from buildbot_farm.compat.buildbot_api import builds_running, config_kwargs
from buildbot_farm.config_checks import Configuration, check_config_arguments, checked_keywords
from buildbot_farm.leases import keys
from buildbot_farm.leases.client import CoordinatorClient, CoordinatorRequestError
from buildbot_farm.leases.preemption import PREEMPTED_PROPERTY, preemption_notice
from buildbot_farm.leases.request_start import StartsOnRequest
from buildbot_farm.leases.worker_settings import (
    BUILDLET_ENV,
    LEASE_ARGS,
    LEFTOVER_ATTEMPTS,
    LEFTOVER_RETRY_INTERVAL,
    LOST_PROPERTY,
    PREEMPTION_QUARANTINE,
    LeaseSettings,
    lease_problems,
)
from buildbot_farm.lookup import farm_service
from buildbot_farm.remote.environment import RUN_REMOTE
from buildbot_farm.remote.handoff import LOG_PREFIX
from buildbot_farm.secret_values import SecretRenderer
from buildbot_farm.web.client import http_client


def _farm_problems(configuration: Configuration) -> Iterator[str]:
    """What each FarmLatentWorker of master.cfg needs from the FarmService it leases from."""
    for worker in configuration.workers:
        lease = worker.requested_lease() if isinstance(worker, FarmLatentWorker) else None
        if lease is not None:
            yield from lease_problems(f"FarmLatentWorker {worker.name!r}", lease,
                                      configuration.farms)


@checked_keywords(
    "worker.FarmLatentWorker", also=(*LEASE_ARGS, *check_config_arguments(AbstractLatentWorker)),
    cross_checks=[_farm_problems],
)
class FarmLatentWorker(StartsOnRequest):
    """A worker that exists only while a build needs it, on a buildlet leased from the farm.

    ``FarmLatentWorker("lw1", buildlet_type="local")`` uses this master's coordinator; give
    ``coordinator_url``, ``user`` and ``key`` to lease from another. ``buildlet_type`` may
    be a renderable; ``key`` and ``password`` may be secrets (``util.Secret("name")``),
    rendered at (re)config. The buildlet must have ``buildbot-worker`` importable by
    ``python``.
    """

    # The lease of a substantiated worker: reconfigService leaves them alone, so that a live
    # worker keeps its buildlet, its keepalive and the client that holds the lease.
    _buildlet: str | None = None
    _lease_client: CoordinatorClient | None = None
    _worker_exec: defer.Deferred[Any] | None = None
    _keepalive: task.LoopingCall | None = None
    _leftover_release: defer.Deferred[None] | None = None
    # The create of a start in progress (waiting in line, perhaps); None between starts.
    _creating: defer.Deferred[dict[str, Any]] | None = None

    def checkConfig(self, name: str, password: Any = None, **kwargs: Any) -> None:
        """Refuse bad arguments with config errors naming them."""
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in LEASE_ARGS}
        kwargs.setdefault("build_wait_timeout", 0)
        for problem in LeaseSettings(**own).problems():
            config.error(f"FarmLatentWorker {name}: {problem}")
        super().checkConfig(name, password, **kwargs)

    def requested_lease(self) -> LeaseSettings | None:
        """The lease settings this worker's master.cfg arguments ask for (before it runs).

        None when they are not usable (checkConfig reported why).
        """
        own = {k: v for k, v in config_kwargs(self).items() if k in LEASE_ARGS}
        settings = LeaseSettings(**own)
        return None if settings.problems() else settings

    async def reconfigService(self, name: str, password: Any = None, **kwargs: Any) -> None:
        """Apply the arguments, their secrets rendered; a missing password is generated (the
        master starts the worker)."""
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in LEASE_ARGS}
        kwargs.setdefault("build_wait_timeout", 0)
        settings = LeaseSettings(**own)
        secrets = SecretRenderer(self.renderSecrets)
        key = await secrets.text(settings.key, "key")
        if secrets.errors:
            raise config.ConfigErrors([f"FarmLatentWorker {name}: {e}" for e in secrets.errors])
        self.lease_settings = dataclasses.replace(settings, key=key)
        if password is None:
            password = self.getRandomPass()
        keepalive = self._keepalive
        if keepalive is not None and keepalive.running and (
            keepalive.interval != settings.keepalive_interval
        ):
            keepalive.stop()
            self._start_keepalive(keepalive)
        await super().reconfigService(name, password, **kwargs)

    def startService(self) -> defer.Deferred[None]:
        """Start, and release in the background the buildlet held before a crash, if any."""
        d: defer.Deferred[None] = defer.ensureDeferred(self._start_service())
        return d

    async def _start_service(self) -> None:
        await super().startService()
        self._leftover_release = defer.ensureDeferred(self._release_leftover())
        self._leftover_release.addErrback(
            log.err, f"FarmLatentWorker {self.name}: releasing the buildlet held before failed"
        )

    async def _release_leftover(self) -> None:
        """Release the buildlet this worker held when its master last stopped without
        releasing it (a crash, ``kill -9``): no build needs it any more."""
        leftover = await self._remembered()
        if leftover is None:
            return
        for attempt in range(LEFTOVER_ATTEMPTS):
            try:
                await self._client().destroy(leftover)
            except CoordinatorRequestError as e:
                if e.status == 0 and attempt + 1 < LEFTOVER_ATTEMPTS and self.running:
                    await task.deferLater(self.master.reactor, LEFTOVER_RETRY_INTERVAL,
                                           lambda: None)
                    continue
                if e.status == 502:
                    log.msg(f"FarmLatentWorker {self.name}: {leftover}, held before the master"
                            " restarted, was already gone")
                else:
                    log.msg(f"FarmLatentWorker {self.name}: cannot release {leftover}, held"
                            f" before the master restarted: {e}; its lease expires by itself")
            else:
                log.msg(f"FarmLatentWorker {self.name}: released {leftover}, held before the"
                        " master restarted")
            break
        if await self._remembered() == leftover:
            await self._remember(None)

    async def _state_id(self) -> int:
        return int(await self.master.db.state.getObjectId(self.name, "FarmLatentWorker"))

    def _state_key(self) -> str:
        # Masters sharing one Buildbot database keep their workers' leases apart.
        return f"buildlet@{self.master.name}"

    async def _remembered(self) -> str | None:
        """The buildlet this worker holds according to the master's database."""
        value = await self.master.db.state.getState(
            await self._state_id(), self._state_key(), None
        )
        return None if value is None else str(value)

    async def _remember(self, name: str | None) -> None:
        await self.master.db.state.setState(await self._state_id(), self._state_key(), name)

    def _client(self) -> CoordinatorClient:
        settings = self.lease_settings
        url, key = settings.coordinator_url, settings.key
        if url is None:
            farm = farm_service(self.master, settings.farm)
            coordinator = None if farm is None or farm.settings is None else (
                farm.settings.coordinator)
            if coordinator is None:
                raise RuntimeError(
                    f"FarmLatentWorker {self.name}: no coordinator_url, and the farm service "
                    f"{settings.farm!r} runs no coordinator: give util.FarmService "
                    f"coordinator=util.FarmCoordinator(...)"
                )
            url = self.master.config.buildbotURL.rstrip("/") + "/plugins/farm/coordinator"
            key = keys.user_key(coordinator.secret.encode(), settings.user)
        return CoordinatorClient(url, settings.user, key, http_client(self.master.reactor))

    def start_instance(self, build: Any) -> defer.Deferred[bool]:
        """Lease a buildlet and start the worker on it (``build`` None: for a build request)."""
        return defer.ensureDeferred(self._start(build))

    async def _start(self, build: Any) -> bool:
        if self._leftover_release is not None:
            await self._leftover_release  # the state it clears is the one this start writes
        client = self._client()
        buildlet_type = self.lease_settings.buildlet_type
        if build is not None:  # None: a start for a build request (then a str)
            buildlet_type = await build.render(buildlet_type)
        self._creating = defer.ensureDeferred(client.create(
            str(buildlet_type),
            wait=self.lease_settings.lease_wait,
            on_place=lambda ahead: log.msg(
                f"FarmLatentWorker {self.name}: waiting in line for a {buildlet_type} "
                f"buildlet, {ahead} ahead"
            ),
        ))
        try:
            lease = await self._creating
        except CoordinatorRequestError as e:
            raise RuntimeError(
                f"FarmLatentWorker {self.name}: could not lease a {buildlet_type} buildlet: {e}"
            ) from e
        except defer.CancelledError:
            raise RuntimeError(
                f"FarmLatentWorker {self.name}: stopped waiting in line for a {buildlet_type}"
                " buildlet (the worker is being stopped)"
            ) from None
        finally:
            self._creating = None
        name = lease["Name"]
        self._buildlet, self._lease_client = name, client
        remembered = defer.ensureDeferred(self._remember(name))  # the exec need not wait for it
        log.msg(f"FarmLatentWorker {self.name}: leased {name}")
        environment = {
            "FARM_MASTER": f"{self.lease_settings.master_host}:{self.registration.getPBPort()}",
            "FARM_WORKER_NAME": self.name,
            "FARM_WORKER_PASSWORD": self.password,
            BUILDLET_ENV: name,
        }
        self._worker_exec = defer.ensureDeferred(
            client.exec(
                name,
                self.lease_settings.python,
                # The agent's farm-remote.pyz: hand-off and bootstrap (buildbot_farm.remote).
                ["-c", RUN_REMOTE, "worker"],
                env=environment,
                on_output=lambda data: self._log_start_lines(name, data),
            )
        )
        self._worker_exec.addBoth(self._worker_ended, name)
        self._keepalive = task.LoopingCall(self._renew, client, name)
        self._keepalive.clock = self.master.reactor
        self._start_keepalive(self._keepalive)
        await remembered
        return True

    def _start_keepalive(self, keepalive: task.LoopingCall) -> None:
        keepalive.start(self.lease_settings.keepalive_interval, now=False).addErrback(
            log.err, f"FarmLatentWorker {self.name}: keepalive failed"
        )

    def _log_start_lines(self, name: str, data: bytes) -> None:
        """Log what the exec says about how the worker started (pre-started or not)."""
        for line in data.decode(errors="replace").splitlines():
            if line.startswith(LOG_PREFIX):
                log.msg(f"FarmLatentWorker {self.name}: on {name}, {line}")

    def _worker_ended(self, result: Any, name: str) -> None:
        """Log how the worker's exec ended.

        Releasing the buildlet halts its agent while the exec's framed stream is still open,
        so that stream ends without its exit status (FrameError), with the connection cut,
        or (a client that re-attaches) with the buildlet gone: after a release, that is how
        the worker is meant to end, not an error.
        """
        if isinstance(result, failure.Failure):
            if name != self._buildlet:
                log.msg(f"FarmLatentWorker {self.name}: the worker on {name} ended with the"
                        " release of its buildlet")
                return
            result = result.getErrorMessage()
        log.msg(f"FarmLatentWorker {self.name}: the worker on {name} ended: {result}")

    async def _renew(self, client: CoordinatorClient, name: str) -> None:
        try:
            status = await client.status(name)
        except CoordinatorRequestError as e:
            if e.status and self._buildlet == name and not await self._still_leased(client, name):
                await self._lease_lost(name, str(e))
            else:
                log.msg(f"FarmLatentWorker {self.name}: renewing the lease on {name}: {e}")
            return
        reason = preemption_notice(status)
        if reason is not None and self._buildlet == name:
            await self._preempted(client, name, reason)

    async def _still_leased(self, client: CoordinatorClient, name: str) -> bool:
        """Whether the coordinator still lists ``name`` among this worker's leases (True when
        it cannot tell: a buildlet that did not answer once is not lost yet)."""
        try:
            leases = await client.buildlets()
        except CoordinatorRequestError:
            return True
        return any(lease.get("Name") == name for lease in leases)

    async def _lease_lost(self, name: str, reason: str) -> None:
        """Disconnect the worker of ``name``, whose lease is gone (lost with its host, most
        often), so that Buildbot ends its build RETRY and substantiates again elsewhere."""
        log.msg(f"FarmLatentWorker {self.name}: the lease on {name} is gone ({reason});"
                " disconnecting its worker, which ends its build RETRY")
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        for build in self._running_builds():
            build.setProperty(LOST_PROPERTY, reason, "FarmLatentWorker")
        self._buildlet, self._lease_client = None, None
        await self._remember(None)
        if self.conn is not None:
            self.conn.loseConnection()

    def attached(self, conn: Any) -> defer.Deferred[None]:
        """Refuse a worker that runs on a buildlet this worker no longer holds (one lost with
        its host, reconnecting once the host is reachable again): its builds are elsewhere."""
        environ = conn.info.get("environ") or {}
        came_from = environ.get(BUILDLET_ENV)
        if came_from is not None and came_from != self._buildlet:
            message = (f"FarmLatentWorker {self.name}: refused the worker of {came_from}, a"
                       f" buildlet it no longer holds (it holds {self._buildlet or 'none'})")
            log.msg(message)
            conn.loseConnection()
            return defer.fail(RuntimeError(message))
        attaching: defer.Deferred[None] = super().attached(conn)
        return attaching

    async def _preempted(self, client: CoordinatorClient, name: str, reason: str) -> None:
        """Take no builds for a while, mark the running ones preempted, and release ``name``."""
        log.msg(f"FarmLatentWorker {self.name}: {name} is {reason}; releasing it, which ends"
                " its build RETRY")
        # Buildbot declares quarantine_timeout as a chained class assignment mypy cannot type.
        current: float = self.quarantine_timeout  # type: ignore[has-type]
        self.quarantine_timeout = max(current, PREEMPTION_QUARANTINE)
        self.putInQuarantine()
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        for build in self._running_builds():
            build.setProperty(PREEMPTED_PROPERTY, f"{name} {reason}", "FarmLatentWorker")
        # The lost-lease path: halting the buildlet ends the worker, so Buildbot ends the
        # build RETRY (stopping it first would end it CANCELLED, the interrupted step's result).
        self._buildlet, self._lease_client = None, None
        try:
            await client.destroy(name)
        except CoordinatorRequestError as e:
            log.msg(f"FarmLatentWorker {self.name}: releasing preempted {name}: {e}")
        await self._remember(None)
        log.msg(f"FarmLatentWorker {self.name}: released preempted {name}")

    def _running_builds(self) -> list[Any]:
        return [
            build
            for builder in self.master.botmaster.builders.values()
            for build in builds_running(builder)
            if build.workerforbuilder is not None and build.workerforbuilder.worker is self
        ]

    def insubstantiate(
        self, fast: bool = False, force_substantiation_build: Any = None
    ) -> defer.Deferred[None]:
        """Leave the coordinator's line first if a start waits in it (a cancelled build, the
        missing timer), so that Buildbot need not wait for a buildlet only to release it."""
        if self._creating is not None:
            self._creating.cancel()
        return super().insubstantiate(fast, force_substantiation_build)

    def stop_instance(self, fast: bool = False) -> defer.Deferred[bool]:
        """Halt the buildlet (and so the worker on it); safe when it is already gone."""
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> bool:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None
        name, self._buildlet = self._buildlet, None
        client, self._lease_client = self._lease_client, None
        if name is None:
            return True
        try:
            await (client or self._client()).destroy(name)
        except CoordinatorRequestError as e:
            if e.status != 502:
                raise
            log.msg(f"FarmLatentWorker {self.name}: {name} was already gone")
        await self._remember(None)
        log.msg(f"FarmLatentWorker {self.name}: released {name}")
        return True
