"""On-demand builds inside FarmService: the job table, build events, waiters and the janitor."""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from buildbot import config
from buildbot.data import resultspec
from buildbot.process.results import RETRY, Results
from twisted.internet import defer
from twisted.python import log
from zope.interface import Attribute, Interface

from buildbot_farm import db
from buildbot_farm.leases.preemption import PREEMPTED_PROPERTY
from buildbot_farm.leases.worker_settings import LOST_PROPERTY
from buildbot_farm.names import ARTIFACTS_PROPERTY
from buildbot_farm.ondemand.config import OnDemandBuilds
from buildbot_farm.ondemand.signing import ArtifactSigner
from buildbot_farm.ondemand.store import (
    ATTEMPT_PROPERTY,
    CHANNEL,
    KEY_PROPERTY,
    Artifact,
    Job,
    JobTable,
)
from buildbot_farm.secret_values import is_pem
from buildbot_farm.thread_pool import in_thread

if TYPE_CHECKING:
    from buildbot_farm.context import FarmContext

JANITOR = "ondemand-janitor"
T = TypeVar("T")


class IOnDemandScheduler(Interface):
    """What an OnDemandScheduler provides; the host finds the master's by it.

    The host is below the scheduler, which waits on it: importing the scheduler here
    would also bring Buildbot's force scheduler (whose imports warn on Twisted 26, an
    error under Buildbot's test kit) into every import of FarmService.
    """

    name = Attribute("The scheduler's name.")
    artifact = Attribute("The repository path pattern of the artifact its builds store.")


class UnknownScheduler(LookupError):
    """A request named no OnDemandScheduler, or one this master does not have."""


class OnDemandHost:
    """The running on-demand machinery of one master; ``jobs`` is None until configured."""

    def __init__(self, farm: FarmContext) -> None:
        self._farm = farm
        self.jobs: JobTable | None = None
        self.settings = OnDemandBuilds()
        self._database: db.Database | None = None
        self._subscription: db.Subscription | None = None
        self._consumers: list[Any] = []
        self._waiters: dict[str, list[defer.Deferred[None]]] = {}
        self.signer: ArtifactSigner | None = None
        self._signing_key: str | None = None

    async def configure(self, settings: OnDemandBuilds | None) -> None:
        """Follow the farm's database and settings; off (``jobs`` None) without settings."""
        database = self._farm.database
        if settings is None or database is None:
            await self.stop()
            return
        await self._load_signer(settings.signing_key)
        self.settings = settings
        if database is not self._database:
            await self.stop()
            master = self._farm.master
            self._database = database
            self.jobs = JobTable(database, master.reactor.seconds, master.name)
            self._subscription = await database.listen(CHANNEL, self._wake)
            for event, handler in (("new", self._build_started), ("finished", self._finished)):
                self._consumers.append(await master.mq.startConsuming(
                    lambda key, build, handler=handler: defer.ensureDeferred(handler(build)),
                    ("builds", None, event),
                ))
        self._farm.add_periodic(JANITOR, self.settings.janitor_interval, self.sweep)

    async def _load_signer(self, value: str | None) -> None:
        """Load the signing key ``value`` (a path, or PEM text from a secret) unless loaded."""
        if value == self._signing_key:
            return
        signer = None
        if value is not None and is_pem(value):
            try:
                signer = ArtifactSigner.from_pem(value.encode())
            except ValueError as e:
                raise config.ConfigErrors(
                    [f"FarmService: OnDemandBuilds: signing_key: the PEM text {e}"]
                ) from e
            log.msg("farm on-demand: artifacts signed with a key given as PEM text (public key"
                    " served at /plugins/farm/api/download/public-key.pem)")
        elif value is not None:
            path = Path(self.master.basedir, value)
            reactor = self.master.reactor
            try:
                signer = await in_thread(reactor, ArtifactSigner.thd_from_file, path)
            except (OSError, ValueError) as e:
                raise config.ConfigErrors(
                    [f"FarmService: on_demand signing_key: cannot use {path}: {e}"]
                ) from e
            log.msg(f"farm on-demand: artifacts signed with {path} (public key {path}.pub)")
        self.signer, self._signing_key = signer, value

    async def stop(self) -> None:
        """Stop listening to builds and notifications; wake nobody (waiters time out)."""
        if self.jobs is not None:
            periodic = self._farm.remove_periodic(JANITOR)
            if periodic is not None:
                await periodic
        for consumer in self._consumers:
            consumer.stopConsuming()
        self._consumers = []
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            await subscription.cancel()
        self.jobs = None
        self._database = None

    @property
    def master(self) -> Any:
        """The Buildbot master this host runs in."""
        return self._farm.master

    def scheduler(self, name: str | None) -> Any:
        """The OnDemandScheduler called ``name``; without a name, the only one there is."""
        found = {
            s.name: s for s in self._farm.master.scheduler_manager.namedServices.values()
            if IOnDemandScheduler.providedBy(s)
        }
        if name is None and len(found) == 1:
            return next(iter(found.values()))
        if name in found:
            return found[name]
        raise UnknownScheduler(
            f"name the on-demand scheduler with 'scheduler': one of {', '.join(sorted(found))}"
            if found else "this master has no schedulers.OnDemandScheduler"
        )

    def _wake(self, key: str) -> None:
        for waiter in self._waiters.pop(key, []):
            if not waiter.called:
                waiter.callback(None)

    async def wait_for(
        self, key: str, timeout: float, done: Any, gone: defer.Deferred[Any] | None = None
    ) -> Job | None:
        """The job of ``key`` once ``done(job)`` holds; None when ``timeout`` passes first.

        Wakes on the job's notifications only: no polling. When ``gone`` fires (the
        client hung up: ``request.notifyFinish()``), it stops waiting and answers None.
        """
        jobs = self.jobs
        assert jobs is not None, "wait_for needs a configured host"

        async def check() -> Job | None:
            job = await jobs.get(key)
            return job if job is not None and done(job) else None

        return await self.wait_until(key, timeout, check, gone)

    async def wait_until(
        self, key: str, timeout: float, check: Callable[[], Awaitable[T | None]],
        gone: defer.Deferred[Any] | None = None,
    ) -> T | None:
        """The first answer of ``check()`` that is not None, asked again on each
        notification of ``key``; None when ``timeout`` passes or ``gone`` fires first."""
        reactor = self.master.reactor
        deadline = reactor.seconds() + timeout
        hung_up: list[bool] = []
        current: list[defer.Deferred[None]] = []

        def hang_up(_: Any) -> None:
            hung_up.append(True)
            if current and not current[-1].called:
                current[-1].callback(None)

        if gone is not None:
            gone.addBoth(hang_up)
        while not hung_up:
            waiter: defer.Deferred[None] = defer.Deferred()
            current.append(waiter)
            self._waiters.setdefault(key, []).append(waiter)
            found = await check()
            if found is not None:
                self._forget(key, waiter)
                return found
            left = deadline - reactor.seconds()
            if left <= 0 or hung_up:
                self._forget(key, waiter)
                return None
            timer = reactor.callLater(left, waiter.callback, None)
            try:
                await waiter
            finally:
                self._forget(key, waiter)
                if timer.active():
                    timer.cancel()
        return None

    def _forget(self, key: str, waiter: defer.Deferred[None]) -> None:
        waiters = self._waiters.get(key, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(key, None)

    async def _properties(self, build: dict[str, Any]) -> dict[str, Any]:
        rows = await self.master.data.get(("builds", build["buildid"], "properties"))
        return {name: value for name, (value, _source) in (rows or {}).items()}

    async def _build_started(self, build: dict[str, Any]) -> None:
        jobs = self.jobs
        if jobs is None:
            return
        props = await self._properties(build)
        if KEY_PROPERTY not in props:
            return
        if await self._resubmitted(build):
            log.msg(f"farm on-demand: stopping build {build['buildid']}: Buildbot reran a request"
                    " whose build ended RETRY; the janitor retries the job as a new attempt")
            await self.master.data.control(
                "stop", {"reason": "the janitor retries this job as a new attempt"},
                ("builds", build["buildid"]),
            )
            return
        await jobs.started(props[KEY_PROPERTY], int(props[ATTEMPT_PROPERTY]),
                           int(build["buildid"]), props.get("workername"))

    async def _finished(self, build: dict[str, Any]) -> None:
        jobs = self.jobs
        if jobs is None:
            return
        props = await self._properties(build)
        if KEY_PROPERTY not in props or await self._resubmitted(build):
            return
        key, attempt = props[KEY_PROPERTY], int(props[ATTEMPT_PROPERTY])
        result = Results[build["results"]] if build.get("results") is not None else "exception"
        if result == "warnings":
            result = "success"
        pattern = "*"
        try:
            pattern = self.scheduler(props.get("scheduler")).artifact
        except UnknownScheduler:
            log.msg(f"farm on-demand: scheduler of build {build['buildid']} is gone;"
                    " taking its first artifact")
        artifact = pick_artifact(props.get(ARTIFACTS_PROPERTY) or [], pattern)
        if artifact is not None and self.signer is not None:
            signature = self.signer.sign_digest(artifact.sha256)
            artifact = dataclasses.replace(artifact, signature=base64.b64encode(signature).decode())
        error = None
        if result != "success":
            error = f"build {build['buildid']} ended {result}"
            why = (props.get(PREEMPTED_PROPERTY) or props.get(LOST_PROPERTY)
                   or build.get("state_string"))
            if why:
                error += f": {why}"
        if not await jobs.finish(key, attempt, result, artifact, error):
            log.msg(f"farm on-demand: build {build['buildid']} of {key[:12]} attempt {attempt}"
                    " was fenced off by a newer attempt; its result is ignored")

    async def _resubmitted(self, build: dict[str, Any]) -> bool:
        """Whether ``build`` is Buildbot's rerun of a request whose earlier build ended RETRY.

        An on-demand job gets a new attempt from the janitor instead, so that its history
        shows each try and ``max_attempts`` bounds them. (A rerun after a master died
        mid-build, whose earlier build has no result, stays the same attempt.)
        """
        earlier = await self.master.data.get(
            ("buildrequests", build["buildrequestid"], "builds")
        )
        return any(
            other["buildid"] < build["buildid"] and other["results"] == RETRY
            for other in earlier or []
        )

    async def sweep(self) -> None:
        """Janitor: requeue jobs to retry or gone stale, and start their builds.

        Jobs whose buildset Buildbot still has pending are touched first: only a job whose
        build Buildbot no longer owes (a lost finish, a dropped request) can go stale.
        """
        jobs = self.jobs
        if jobs is None:
            return
        pending = await self.master.data.get(
            ("buildsets",), filters=[resultspec.Filter("complete", "eq", [False])]
        )
        await jobs.touch([int(b["bsid"]) for b in pending or []])
        now = self.master.reactor.seconds()
        for job in await jobs.rescue(self.settings.max_attempts, now - self.settings.stale_after):
            try:
                await self.scheduler(job.scheduler).start_attempt(job)
            except UnknownScheduler:
                await jobs.finish(job.key, job.attempt, "failure", None,
                                  f"scheduler {job.scheduler!r} no longer exists")
            log.msg(f"farm on-demand: requeued {job.key[:12]} as attempt {job.attempt}")


def pick_artifact(published: list[dict[str, Any]], pattern: str) -> Artifact | None:
    """The first published file whose path matches the glob ``pattern``, or None."""
    for item in published:
        if fnmatch.fnmatch(str(item.get("path", "")), pattern):
            return Artifact(item["path"], item["url"], int(item["size"]), item["sha256"])
    return None
