"""``schedulers.OnDemandScheduler``: a force form in the web UI that also serves the API.

Both ways in normalise the parameters the same way (:mod:`.params`) and go through the
farm's job table, so one request gives one key and at most one build at a time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from buildbot import config
from buildbot.process.properties import Properties
from buildbot.schedulers import forcesched
from twisted.internet import defer

from buildbot_farm.artifacts import paths
from buildbot_farm.artifacts.steps import NoRepository, find_repository
from buildbot_farm.config_checks import check_config_arguments, checked_keywords
from buildbot_farm.ondemand import params
from buildbot_farm.ondemand.config import OFF
from buildbot_farm.ondemand.jobs import ATTEMPT_PROPERTY, KEY_PROPERTY, Job, Submission

FARM_SERVICE = "farm"
_SOURCE = "On-demand build"
# Buildbot collapses a queued build request into a newer one of the same builder unless
# their sourcestamps or their properties *from the source "Scheduler"* differ: on-demand
# requests have no sourcestamps, so the key and attempt carry that source to keep every
# job's request its own.
_UNCOLLAPSIBLE_SOURCE = "Scheduler"


def form_field(parameter: params.Parameter) -> forcesched.BaseParameter:
    """The force-form field that shows ``parameter`` in the web UI."""
    label = parameter.label or parameter.name
    if isinstance(parameter, params.ChoiceParameter):
        return forcesched.ChoiceStringParameter(
            name=parameter.name, label=label, choices=list(parameter.choices),
            default=parameter.default or parameter.choices[0],
        )
    if isinstance(parameter, params.ListParameter):
        return forcesched.StringParameter(
            name=parameter.name, label=label, default=parameter.separator.join(parameter.default)
        )
    return forcesched.StringParameter(name=parameter.name, label=label,
                                      default=parameter.default or "")


def find_host(master: Any) -> Any:
    """The on-demand part of the master's farm service; RuntimeError without one."""
    farm = master.service_manager.namedServices.get(FARM_SERVICE)
    host = getattr(farm, "on_demand", None)
    if host is None or host.jobs is None:
        raise RuntimeError(OFF)
    return host


# ForceScheduler arguments OnDemandScheduler sets itself (builder= names the one builder).
_SET_HERE = ("builderNames", "codebases", "properties")


@checked_keywords("schedulers.OnDemandScheduler", also=[
    name for name in check_config_arguments(forcesched.ForceScheduler) if name not in _SET_HERE
])
class OnDemandScheduler(forcesched.ForceScheduler):
    """Builds ``builder`` once per distinct set of ``parameters`` values.

    ``parameters`` are :class:`~buildbot_farm.ondemand.params.Parameter` objects; their
    values become build properties, plus ``farm_build_key`` and ``farm_attempt``. The build
    must publish its result with ``steps.ArtifactUpload``; the first file whose path
    matches the glob ``artifact`` is the job's artifact.
    """

    def __init__(
        self, name: str, builder: str, parameters: Sequence[params.Parameter] = (),
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
        values = params.normalise(self.parameters, raw)
        return params.build_key(self.name, values), values

    async def submit(self, raw: Mapping[str, Any]) -> Submission:
        """Find or create the job for ``raw``; start a build when its attempt needs one."""
        key, values = self.normalise(raw)
        jobs = find_host(self.master).jobs
        submission: Submission = await jobs.submit(key, self.name, params.canonical_json(values))
        artifact = submission.job.artifact
        if artifact is not None and not await self._still_stored(artifact.path):
            await jobs.expire(key, submission.job.attempt,
                              f"its artifact {artifact.path} was removed; rebuilt")
            submission = await jobs.submit(key, self.name, params.canonical_json(values))
        if submission.needs_build:
            await self.start_attempt(submission.job)
        return submission

    async def _still_stored(self, path: str) -> bool:
        """Whether the artifact repository still holds ``path`` (retention may remove it)."""
        try:
            repository = find_repository(self.master)
        except NoRepository:
            return True
        return await repository.stat(paths.split(path)) is not None

    async def start_attempt(self, job: Job) -> None:
        """Submit one build request for the job's current attempt."""
        properties = Properties()
        for name, value in json.loads(job.parameters).items():
            properties.setProperty(name, value, _SOURCE)
        properties.setProperty(KEY_PROPERTY, job.key, _UNCOLLAPSIBLE_SOURCE)
        properties.setProperty(ATTEMPT_PROPERTY, job.attempt, _UNCOLLAPSIBLE_SOURCE)
        bsid, _ = await self.addBuildsetForSourceStampsWithDefaults(
            reason=f"on-demand build {job.key[:12]} (attempt {job.attempt})",
            sourcestamps=[], properties=properties, builderNames=self.builderNames,
        )
        await find_host(self.master).jobs.buildset_added(job.key, job.attempt, bsid)

    def force(
        self, owner: str, builderNames: Any = None, builderid: Any = None, **kwargs: Any  # noqa: N803
    ) -> defer.Deferred[dict[str, Any]]:
        """The web UI's force button: the same submission as ``POST /api/build``."""
        return defer.ensureDeferred(self._force(kwargs))

    async def _force(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        raw = {p.name: kwargs[p.name] for p in self.parameters if p.name in kwargs}
        try:
            submission = await self.submit(raw)
        except params.BadParameters as e:
            raise forcesched.CollectedValidationError(e.problems) from e
        return {"key": submission.job.key, "status": submission.job.status}


def _declaration_problems(parameter: Any) -> list[str]:
    if not isinstance(parameter, params.Parameter):
        return [f"parameters must be util.OnDemand*Parameter objects, not {parameter!r}"]
    return parameter.problems()
