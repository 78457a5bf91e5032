"""Starting a FarmLatentWorker when a build request for it arrives, not when its build starts.

Buildbot substantiates a latent worker from inside the build: after a scheduler writes the build
request, the BotMaster waits out a 0.1 s debounce, the distributor claims the request, and the
build makes its first database writes; only then does it call ``substantiate``. On a warm
buildlet the farm's own part (lease, hand-off, attach) is shorter than that wait. So a worker
that is the only worker of the requested builder starts substantiating as soon as the request's
``new`` message arrives: the lease, the hand-off and the attach overlap Buildbot's scheduling,
and the build finds its worker substantiated, or waits for the substantiation under way
(Buildbot's own state machine: a second ``substantiate`` waits for the first one's result).

Only then: with several workers on the builder, Buildbot picks one at random, and the others
would lease for nothing; a worker that is busy, paused, quarantined or already substantiating is
left alone (as is one with a negative ``build_wait_timeout``, which Buildbot never stops); a
renderable ``buildlet_type`` needs the build's properties, so it waits for the
build; and with another message queue than Buildbot's in-process one (``simple``), requests of
other masters would arrive here too. A worker started so that gets no build within
``start_on_request`` seconds (the request was cancelled, or a lock or the builder's
``canStartBuild`` holds it back) releases its buildlet: that is Buildbot's build-wait timer,
which the build's start clears. A build stopped before it asks for its worker ends the start
for its request at once (:meth:`StartsOnRequest.substantiate`), even one waiting in line for
a full pool. ``start_on_request=0`` turns all this off.
"""


from __future__ import annotations

from typing import Any

from buildbot.worker.latent import AbstractLatentWorker, States
from twisted.internet import defer
from twisted.python import failure, log

from buildbot_farm.compat.buildbot_api import release_latent_worker

# The routing key of Buildbot's message for each new build request (any builder).
NEW_BUILD_REQUESTS = ("buildrequests", None, "new")


class StartsOnRequest(AbstractLatentWorker):
    """A latent worker that starts on each new build request only it can take (see above).

    Its subclass has ``lease_settings`` (``buildlet_type`` and ``start_on_request``, see
    :class:`~buildbot_farm.leases.worker_settings.LeaseSettings`) and a ``start_instance``
    that takes ``build=None``: the start of a build request, before its build exists.
    """

    lease_settings: Any
    _request_consumer: Any = None
    # The build request this worker was last started for, until a build asks for the worker.
    _unasked_request: object | None = None

    def startService(self) -> defer.Deferred[None]:
        """Start, then listen to the master's new build requests."""
        return defer.ensureDeferred(self._start_listening())

    async def _start_listening(self) -> None:
        await super().startService()
        self._request_consumer = await self.master.mq.startConsuming(
            self._requested, NEW_BUILD_REQUESTS
        )

    def stopService(self) -> defer.Deferred[None]:
        """Stop listening, then stop as Buildbot's latent workers do."""
        if self._request_consumer is not None:
            self._request_consumer.stopConsuming()
            self._request_consumer = None
        d: defer.Deferred[None] = super().stopService()
        return d

    def substantiate(self, wfb: Any, build: Any) -> defer.Deferred[bool]:
        """Substantiate for ``build`` as Buildbot does, except for a build stopped before it
        asked: it gets no worker (False), and a start for a build request that no build has
        asked for yet, perhaps waiting in line, ends too."""
        if build is not None and build.stopped:
            if self._unasked_request is not None:
                self._unasked_request = None
                self.insubstantiate().addErrback(
                    log.err, f"FarmLatentWorker {self.name}: ending a start for a stopped build"
                )
            return defer.succeed(False)
        if build is not None:
            self._unasked_request = None
        d: defer.Deferred[bool] = super().substantiate(wfb, build)
        return d

    def _builder_served_alone(self, message: dict[str, Any]) -> str | None:
        """The name of the requested builder, if this worker is its only worker."""
        builder = self.botmaster.getBuilderById(message.get("builderid"))
        if builder is None or builder.config is None:
            return None
        return str(builder.name) if list(builder.config.workernames) == [self.name] else None

    def _may_start_on_request(self) -> bool:
        settings = self.lease_settings
        return bool(
            self.running
            and settings.start_on_request > 0
            and isinstance(settings.buildlet_type, str)
            and self.master.config.mq.get("type") == "simple"
            and self.state == States.NOT_SUBSTANTIATED
            and self.build_wait_timeout >= 0  # negative: never released, so never unused
            and self.canStartBuild()
        )

    def _requested(self, key: tuple[str, ...], message: dict[str, Any]) -> None:
        builder = self._builder_served_alone(message)
        if builder is None or not self._may_start_on_request():
            return
        request = message.get("buildrequestid")
        grace = self.lease_settings.start_on_request
        log.msg(f"FarmLatentWorker {self.name}: build request {request} for {builder}:"
                " starting the worker now")
        # Set before substantiating: a substantiation that fails at once clears it.
        self.build_wait_timer = self.master.reactor.callLater(
            grace, self._release_unused, request, grace
        )
        self._unasked_request = request
        started = self.substantiate(None, None)
        started.addErrback(self._not_started, request)

    def _not_started(self, reason: failure.Failure, request: object) -> None:
        log.msg(f"FarmLatentWorker {self.name}: the start for build request {request}"
                f" ended without a worker: {reason.getErrorMessage()}")

    def _release_unused(self, request: object, grace: float) -> None:
        self.build_wait_timer = None
        self._unasked_request = None
        log.msg(f"FarmLatentWorker {self.name}: no build came within {grace:g} s of build"
                f" request {request}, which started the worker; releasing its buildlet")
        release_latent_worker(self).addErrback(
            log.err, f"FarmLatentWorker {self.name}: releasing an unused buildlet failed"
        )
