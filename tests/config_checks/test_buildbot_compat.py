"""Tripwires: what the configuration checks read of Buildbot still reads the same way.

If one of these fails after a Buildbot upgrade, ``buildbot_farm/config_checks/_buildbot.py``
needs to follow it; the test's name says which part.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from buildbot.config.errors import ConfigErrors
from buildbot.config.master import FileLoader
from buildbot.plugins import steps, util
from buildbot.worker.latent import AbstractLatentWorker

from buildbot_farm.config_checks import STEP_ARGUMENTS, check_config_arguments
from buildbot_farm.config_checks._buildbot import config_being_loaded, steps_of


def test_buildstep_still_lists_the_arguments_it_takes() -> None:
    """BuildStep._params_names still holds the keywords every step takes."""
    assert {"name", "haltOnFailure", "doStepIf", "workdir", "locks"} <= set(STEP_ARGUMENTS)


def test_worker_and_scheduler_arguments_still_pass_through_check_config() -> None:
    """The checkConfig chains of latent workers and force schedulers still name their keywords."""
    # Imported in the test, where setup.cfg's warning filter applies: importing the force
    # scheduler at collection, after Buildbot's test kit turned warnings into errors, fails.
    from buildbot.schedulers.forcesched import ForceScheduler

    assert {"name", "password", "build_wait_timeout", "max_builds", "missing_timeout",
            "properties"} <= set(check_config_arguments(AbstractLatentWorker))
    assert {"builderNames", "label", "buttonName", "reason", "username", "priority",
            "properties", "codebases"} <= set(check_config_arguments(ForceScheduler))


def test_build_factories_still_keep_each_steps_class_and_arguments() -> None:
    """BuildFactory.steps still tells each step's class and the name it was given."""
    factory = util.BuildFactory([steps.ShellCommand(command=["true"], name="build"),
                                 steps.ArtifactUpload(workersrc="x")])
    assert [(cls.__name__, name) for cls, name in steps_of(factory)] == [
        ("ShellCommand", "build"), ("ArtifactUpload", "upload artifacts")]


def test_master_cfg_still_runs_in_process_with_its_config_in_its_globals(tmp_path: Path) -> None:
    """Buildbot's loader still runs master.cfg here: the check a farm object adds runs, reports."""
    (tmp_path / "master.cfg").write_text(
        "from buildbot.plugins import reporters, util, worker\n"
        "c = BuildmasterConfig = {}\n"
        "c['buildbotNetUsageData'] = None\n"
        "c['protocols'] = {'pb': {'port': 'tcp:0'}}\n"
        "c['workers'] = [worker.Worker('w', 'p')]\n"
        "c['builders'] = [util.BuilderConfig(name='b', workernames=['w'],"
        " factory=util.BuildFactory())]\n"
        "c['multiMaster'] = True\n"
        "c['services'] = [util.FarmService(), reporters.BuildRecorder(farm='elsewhere')]\n"
    )
    with pytest.raises(ConfigErrors) as raised:
        FileLoader(str(tmp_path), "master.cfg").loadConfig()
    assert [e for e in raised.value.errors if "FarmService 'elsewhere'" in e], raised.value
    assert config_being_loaded() is None
