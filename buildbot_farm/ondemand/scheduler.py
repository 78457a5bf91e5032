"""``schedulers.OnDemandScheduler``: a force form in the web UI that also serves the API.

Both ways in normalise the parameters the same way (:mod:`.model`) and go through the
farm's job table, so one request gives one key and at most one build at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from buildbot import config
from buildbot.process.properties import Properties
from buildbot.schedulers import forcesched
from buildbot.www.rest import JSONRPC_CODES, BadJsonRpc2
from twisted.internet import defer
from zope.interface import implementer

from buildbot_farm.artifacts import paths
from buildbot_farm.artifacts.steps import NoRepository, find_repository
from buildbot_farm.config_checks import Configuration, check_config_arguments, checked_keywords
from buildbot_farm.lookup import farm_service
from buildbot_farm.ondemand import form, model
from buildbot_farm.ondemand.config import OFF
from buildbot_farm.ondemand.host import IOnDemandScheduler, OnDemandHost
from buildbot_farm.ondemand.store import ATTEMPT_PROPERTY, KEY_PROPERTY, Job, JobTable, Submission

_SOURCE = "On-demand build"
# Buildbot collapses a queued build request into a newer one of the same builder unless
# their sourcestamps or their properties *from the source "Scheduler"* differ: on-demand
# requests have no sourcestamps, so the key and attempt carry that source to keep every
# job's request its own.
_UNCOLLAPSIBLE_SOURCE = "Scheduler"
_FORM_SOURCE = "Force Build Form"
# How long the form waits for the build request of a job another request just created.
BUILDSET_WAIT = 10.0


def form_field(parameter: model.Parameter) -> forcesched.BaseParameter:
    """The force-form field that shows ``parameter`` in the web UI."""
    label = parameter.label or parameter.name
    if isinstance(parameter, model.ChoiceParameter):
        return forcesched.ChoiceStringParameter(
            name=parameter.name, label=label, choices=list(parameter.choices),
            default=parameter.default or parameter.choices[0],
        )
    if isinstance(parameter, model.ListParameter):
        return forcesched.StringParameter(
            name=parameter.name, label=label, default=parameter.separator.join(parameter.default)
        )
    return forcesched.StringParameter(name=parameter.name, label=label,
                                      default=parameter.default or "")


def find_host(master: Any) -> tuple[OnDemandHost, JobTable]:
    """The on-demand part of the master's farm service and its job table; RuntimeError
    without one."""
    farm = farm_service(master)
    host = None if farm is None else farm.on_demand
    if host is None or host.jobs is None:
        raise RuntimeError(OFF)
    return host, host.jobs


# ForceScheduler arguments OnDemandScheduler sets itself (builder= names the one builder).
_SET_HERE = ("builderNames", "codebases", "properties")


ADD_ON_DEMAND = "give util.FarmService(on_demand=util.OnDemandBuilds()) in c['services']"


def _configuration_problems(configuration: Configuration) -> Iterator[str]:
    """The OnDemandSchedulers of master.cfg whose FarmService runs no on-demand builds."""
    missing = configuration.missing_capability("on_demand")
    if missing is None:
        return
    for scheduler in configuration.schedulers:
        if isinstance(scheduler, OnDemandScheduler):
            yield (f"OnDemandScheduler {scheduler.name!r}: on-demand builds are off, as"
                   f" {missing}: {ADD_ON_DEMAND}")


@checked_keywords("schedulers.OnDemandScheduler", also=[
    name for name in check_config_arguments(forcesched.ForceScheduler) if name not in _SET_HERE
], cross_checks=[_configuration_problems])
@implementer(IOnDemandScheduler)
class OnDemandScheduler(forcesched.ForceScheduler):
    """Builds ``builder`` once per distinct set of ``parameters`` values.

    ``parameters`` are :class:`~buildbot_farm.ondemand.model.Parameter` objects; their
    values become build properties, plus ``farm_build_key`` and ``farm_attempt``. The build
    must publish its result with ``steps.ArtifactUpload``; the first file whose path
    matches the glob ``artifact`` is the job's artifact.
    """

    def __init__(
        self, name: str, builder: str, parameters: Sequence[model.Parameter] = (),
        artifact: str = "*", **kwargs: Any,
    ) -> None:
        self.parameters = tuple(parameters)
        self.artifact = artifact
        problems = [p for parameter in self.parameters for p in _declaration_problems(parameter)]
        names = [p.name for p in self.parameters]
        if len(set(names)) != len(names):
            problems.append("parameter names must be unique")
        for problem in problems:
            config.error(f"OnDemandScheduler {name!r}: {problem}")
        fields = [] if problems else [form_field(p) for p in self.parameters]
        super().__init__(
            name=name, builderNames=[builder],
            codebases=[forcesched.CodebaseParameter(codebase="", hide=True)],
            properties=fields, **kwargs,
        )

    def reconfigServiceWithSibling(self, sibling: OnDemandScheduler) -> Any:  # noqa: N802
        """Take the sibling's parameters too: they are not constructor arguments of the base."""
        self.parameters, self.artifact = sibling.parameters, sibling.artifact
        return super().reconfigServiceWithSibling(sibling)

    def normalise(self, raw: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The build key and canonical values of ``raw``; BadParameters naming each bad one."""
        values = model.normalise(self.parameters, raw)
        return model.build_key(self.name, values), values

    async def submit(
        self, raw: Mapping[str, Any], requested: form.FormRequest | None = None
    ) -> Submission:
        """Find or create the job for ``raw``; start a build when its attempt needs one.

        ``requested`` (from the force form) is recorded on that build, if one starts.
        """
        key, values = self.normalise(raw)
        _, jobs = find_host(self.master)
        submission: Submission = await jobs.submit(key, self.name, model.canonical_json(values))
        artifact = submission.job.artifact
        if artifact is not None and not await self._still_stored(artifact.path):
            await jobs.expire(key, submission.job.attempt,
                              f"its artifact {artifact.path} was removed; rebuilt")
            submission = await jobs.submit(key, self.name, model.canonical_json(values))
        if submission.needs_build:
            await self.start_attempt(submission.job, requested)
        return submission

    async def _still_stored(self, path: str) -> bool:
        """Whether the artifact repository still holds ``path`` (retention may remove it)."""
        try:
            repository = find_repository(self.master)
        except NoRepository:
            return True
        return await repository.stat(paths.split(path)) is not None

    async def start_attempt(self, job: Job, requested: form.FormRequest | None = None) -> None:
        """Submit one build request for the job's current attempt."""
        properties = Properties()
        for name, value in json.loads(job.parameters).items():
            properties.setProperty(name, value, _SOURCE)
        properties.setProperty(KEY_PROPERTY, job.key, _UNCOLLAPSIBLE_SOURCE)
        properties.setProperty(ATTEMPT_PROPERTY, job.attempt, _UNCOLLAPSIBLE_SOURCE)
        reason, priority = f"on-demand build {job.key[:12]} (attempt {job.attempt})", None
        if requested is not None:
            properties.setProperty("owner", requested.owner, _FORM_SOURCE)
            properties.setProperty("reason", requested.reason, _FORM_SOURCE)
            reason += f", forced by {requested.owner or 'anonymous'}: {requested.reason}"
            priority = requested.priority
        bsid, _ = await self.addBuildsetForSourceStampsWithDefaults(
            reason=reason, sourcestamps=[], properties=properties,
            builderNames=self.builderNames, priority=priority,
        )
        _, jobs = find_host(self.master)
        await jobs.buildset_added(job.key, job.attempt, bsid)

    def force(
        self, owner: str, builderNames: Any = None, builderid: Any = None, **kwargs: Any  # noqa: N803
    ) -> defer.Deferred[form.ForceAnswer]:
        """The web UI's force button: the same submission as ``POST /api/build``.

        Answers like ``ForceScheduler.force()``, ``(buildset id, {builder id: build request
        id})``, so the form closes and shows the build: a new build's request; a queued or
        running job's request (joined); for a built key, the request of the build that made
        the artifact (or, when Buildbot no longer knows that build, a request cancelled at
        once whose reason says the key is already built). Unknown arguments are refused by
        name, as ``POST /api/build`` refuses them.
        """
        return defer.ensureDeferred(self._force(owner, builderNames, builderid, kwargs))

    async def _force(
        self, owner: str, builder_names: Any, builderid: Any, kwargs: dict[str, Any]
    ) -> form.ForceAnswer:
        if not await self.computeBuilderNames(builder_names, builderid):
            raise KeyError(f"OnDemandScheduler {self.name!r} builds only {self.builderNames}")
        requested = await self._form_request(owner, kwargs)
        raw = form.build_arguments((p.name for p in self.parameters), kwargs)
        try:
            submission = await self.submit(raw, requested)
        except model.BadParameters as e:
            raise forcesched.CollectedValidationError(e.problems) from e
        return await self._answer(submission.job)

    async def _form_request(self, owner: str, kwargs: dict[str, Any]) -> form.FormRequest:
        """The owner, reason and priority fields, checked as ForceScheduler checks them."""
        lists = {k: v if isinstance(v, list) else [v] for k, v in kwargs.items()}
        collector = forcesched.ValidationErrorCollector()
        reason = await collector.collectValidationErrors(
            self.reason.fullName, self.reason.getFromKwargs, lists)
        if owner is None or owner == "anonymous":
            owner = await collector.collectValidationErrors(
                self.username.fullName, self.username.getFromKwargs, lists)
        priority = await collector.collectValidationErrors(
            self.forced_priority.fullName, self.forced_priority.getFromKwargs, lists)
        collector.maybeRaiseCollectedErrors()
        return form.FormRequest(owner, reason, priority)

    async def _answer(self, job: Job) -> form.ForceAnswer:
        """The force answer for ``job`` as it is after a submission."""
        host, jobs = find_host(self.master)
        if job.status == "succeeded":
            row = await jobs.attempt(job.key, job.attempt)
            produced = row and await form.producing_request(
                self.master, job.key, job.attempt, row["buildset_id"], row["build_id"])
            return produced or await self._cached_notice(job)

        async def current_buildset() -> tuple[int, int] | None:
            now = await jobs.get(job.key)
            row = None if now is None else await jobs.attempt(now.key, now.attempt)
            if now is None or row is None or row["buildset_id"] is None:
                return None
            return now.attempt, int(row["buildset_id"])

        # The build request of a job submitted a moment ago may still be on its way.
        found = await host.wait_until(job.key, BUILDSET_WAIT, current_buildset)
        answer = None
        if found is not None and await form.carries(self.master, found[1], job.key, found[0]):
            answer = await form.requests_of(self.master, found[1])
        if answer is None:
            raise BadJsonRpc2(
                f"on-demand job {job.key} is {job.status}, but Buildbot has no build request"
                f" for it yet; GET /plugins/farm/api/build/{job.key} shows its attempts",
                JSONRPC_CODES["internal_error"],
            )
        return answer

    async def _cached_notice(self, job: Job) -> form.ForceAnswer:
        """A build request, cancelled at once, saying the key is already built.

        For a built key whose build Buildbot no longer knows (its database was replaced, or
        is not the one the farm database was filled by): the form needs a request to show.
        """
        assert job.artifact is not None, "a succeeded job has its artifact"
        why = (f"on-demand build {job.key[:12]} is already built ({job.artifact.url});"
               " Buildbot no longer has the build that made it, and nothing was rebuilt")
        properties = Properties()
        properties.setProperty(KEY_PROPERTY, job.key, _UNCOLLAPSIBLE_SOURCE)
        properties.setProperty(ATTEMPT_PROPERTY, job.attempt, _UNCOLLAPSIBLE_SOURCE)
        bsid, brids = await self.addBuildsetForSourceStampsWithDefaults(
            reason=why, sourcestamps=[], properties=properties, builderNames=self.builderNames,
        )
        for brid in brids.values():
            await self.master.data.control("cancel", {"reason": why}, ("buildrequests", brid))
        return int(bsid), {int(b): int(r) for b, r in brids.items()}


def _declaration_problems(parameter: Any) -> list[str]:
    if not isinstance(parameter, model.Parameter):
        return [f"parameters must be util.OnDemand*Parameter objects, not {parameter!r}"]
    return parameter.problems()
