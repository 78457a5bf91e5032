"""The Buildbot (and master.cfg loading) details the farm relies on.

Everything here reads something Buildbot does not promise as an API; it is kept in this one
module so that a Buildbot upgrade that changes one of them breaks one place, and
``tests/test_compat.py`` fails loudly, naming which one.

Two more are methods the farm overrides rather than reads: ``Build.startNextStep`` and
``Build.buildFinished`` (:data:`BUILD_HOOKS`, see ``buildbot_farm.artifacts.build_tokens``).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

from buildbot.process.buildstep import BuildStep

# The keyword arguments every build step takes: BuildStep.__init__ takes **kwargs and checks
# them against this list of its own (Buildbot's comment says delegating subclasses use it).
STEP_ARGUMENTS: tuple[str, ...] = tuple(BuildStep._params_names)

# The name master.cfg must give its configuration dict (Buildbot's documented contract).
CONFIG_NAME = "BuildmasterConfig"


def check_config_arguments(cls: type) -> tuple[str, ...]:
    """The keyword arguments ``cls.checkConfig`` accepts, following ``**kwargs`` up the MRO.

    Buildbot's workers and schedulers take their arguments in ``checkConfig`` and pass what
    they do not know to the next class's ``checkConfig``; the walk stops at the first one
    without ``**kwargs``.
    """
    names: list[str] = []
    for klass in cls.__mro__:
        method = klass.__dict__.get("checkConfig")
        if method is None:
            continue
        parameters = list(inspect.signature(method).parameters.values())[1:]
        names += [p.name for p in parameters
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return tuple(dict.fromkeys(names))


def steps_of(factory: Any) -> Iterator[tuple[type, str]]:
    """The class and name of each step of a ``util.BuildFactory``.

    ``BuildFactory.steps`` holds Buildbot's private ``_BuildStepFactory`` objects, which
    keep the step's class and the arguments it was written with.
    """
    for step in getattr(factory, "steps", None) or ():
        step_class = getattr(step, "step_class", None)
        if not isinstance(step_class, type):
            continue
        name = getattr(step, "kwargs", {}).get("name", getattr(step_class, "name", "?"))
        yield step_class, str(name)


def config_being_loaded() -> dict[str, Any] | None:
    """The ``BuildmasterConfig`` dict of the master.cfg that is running now, if any.

    Buildbot runs master.cfg in this process (``execfile``) with a dict of its own as the
    file's globals, so while master.cfg constructs an object, one frame up the stack has
    ``BuildmasterConfig`` among its globals (once master.cfg has bound it: Buildbot's
    sample binds it on its first line with ``c = BuildmasterConfig = {}``). None outside
    master.cfg, for example when the master builds a step for a build.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_globals.get(CONFIG_NAME)
        if isinstance(candidate, dict):
            return candidate
        frame = frame.f_back
    return None


# The Build methods TokenMintingBuild overrides: startNextStep is where a build with its id
# and number starts its first step (and may return a Deferred), buildFinished where every
# build ends before it is marked finished. Buildbot offers no hook at either point.
BUILD_HOOKS = ("startNextStep", "buildFinished")


def config_kwargs(service: Any) -> dict[str, Any]:
    """The keyword arguments master.cfg gave a ``BuildbotService`` (before it is configured).

    Buildbot keeps them in ``_config_kwargs`` to call ``reconfigService`` with later; the
    farm reads them earlier, when a new configuration is checked (what it asks for, not
    what runs).
    """
    return dict(service._config_kwargs)


def builds_running(builder: Any) -> list[Any]:
    """The ``Build`` objects ``builder`` (a botmaster ``Builder``) runs now.

    ``Builder.building`` is the only list of them; the data API has build dicts, not the
    objects whose ``workerforbuilder`` says which worker runs them.
    """
    return list(builder.building)


def run_first(build: Any, steps: list[Any]) -> None:
    """Make ``steps`` (step factories) the next steps ``build`` runs.

    ``Build.steps`` is the queue of the steps still to run; Buildbot's public
    ``addStepsAfterCurrentStep`` needs a current step, which a build has not yet before its
    first.
    """
    build.steps[0:0] = build.setupBuildSteps(steps)


def release_latent_worker(worker: Any) -> Any:
    """Disconnect latent ``worker`` and stop its instance, as at the end of its build-wait time.

    That is Buildbot's ``AbstractLatentWorker._soft_disconnect`` (what ``build_wait_timeout``
    calls); the public ``insubstantiate`` would leave the connection to drop by itself.
    Returns its Deferred.
    """
    return worker._soft_disconnect()
