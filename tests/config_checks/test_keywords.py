"""Every farm class master.cfg constructs names an unknown keyword and the accepted ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from buildbot.config.errors import ConfigErrors, capture_config_errors
from buildbot.plugins import reporters, schedulers, steps, util, worker

from buildbot_farm.config_checks import suggestion

SECRET = "keyword-test-secret"
POOL = util.BuildletPool("local")

# (how master.cfg writes it, a call with one misspelled keyword, the keyword, its match)
CASES: list[tuple[str, Callable[[], Any], str, str]] = [
    ("util.FarmService", lambda: util.FarmService(db_ulr="sqlite:///x.sqlite"), "db_ulr",
     "db_url"),
    ("util.FarmCoordinator", lambda: util.FarmCoordinator(secret=SECRET, pols=[POOL]), "pols",
     "pools"),
    ("util.BuildletPool", lambda: util.BuildletPool("local", max_cout=2), "max_cout",
     "max_count"),
    ("util.SignalPreemption", lambda: util.SignalPreemption(signl="SIGUSR1"), "signl", "signal"),
    ("util.GCEPreemption", lambda: util.GCEPreemption(url="http://m", intervl=1), "intervl",
     "interval"),
    ("util.AWSPreemption", lambda: util.AWSPreemption(ulr="http://m"), "ulr", "url"),
    ("util.AzurePreemption", lambda: util.AzurePreemption(ulr="http://m"), "ulr", "url"),
    ("util.ArtifactRepository", lambda: util.ArtifactRepository(directroy="a"), "directroy",
     "directory"),
    ("util.S3Bucket", lambda: util.S3Bucket(endpoint="http://s3", buckt="b"), "buckt", "bucket"),
    ("util.BuildRecords", lambda: util.BuildRecords(api_key={}), "api_key", "api_keys"),
    ("util.OnDemandBuilds", lambda: util.OnDemandBuilds(max_attempt=2), "max_attempt",
     "max_attempts"),
    ("util.OnDemandString", lambda: util.OnDemandString("os", defualt="x"), "defualt",
     "default"),
    ("util.OnDemandChoice", lambda: util.OnDemandChoice("os", choice=("a",)), "choice",
     "choices"),
    ("util.OnDemandList", lambda: util.OnDemandList("p", separater=","), "separater",
     "separator"),
    ("steps.ArtifactToken", lambda: steps.ArtifactToken(knd="bin"), "knd", "kind"),
    ("steps.ArtifactUpload", lambda: steps.ArtifactUpload(workersrc="x", dset="y"), "dset",
     "dest"),
    ("steps.ArtifactDownload",
     lambda: steps.ArtifactDownload(src="x", workerdest="y", blocksiz=1), "blocksiz",
     "blocksize"),
    ("steps.ContainerTask",
     lambda: steps.ContainerTask(image="i", command=["true"], imputs={}), "imputs", "inputs"),
    ("worker.FarmLatentWorker", lambda: worker.FarmLatentWorker("w", buildlet_typ="local"),
     "buildlet_typ", "buildlet_type"),
    ("reporters.BuildRecorder", lambda: reporters.BuildRecorder(builder=["b"]), "builder",
     "builders"),
    ("schedulers.OnDemandScheduler",
     lambda: schedulers.OnDemandScheduler(name="s", builder="b", parameter=[]), "parameter",
     "parameters"),
]


@pytest.mark.parametrize(("label", "call", "keyword", "match"), CASES, ids=[c[0] for c in CASES])
def test_an_unknown_keyword_is_named_with_the_closest_and_the_accepted(
    label: str, call: Callable[[], Any], keyword: str, match: str
) -> None:
    """The config error names the class, the keyword, the closest accepted one and the rest."""
    with pytest.raises(ConfigErrors) as raised:
        call()
    (message,) = raised.value.errors
    assert message.startswith(f"{label}: unknown argument {keyword!r}"), message
    assert f"(did you mean {match!r}?)" in message
    assert f"; it takes {match}" in message or f", {match}" in message


def test_the_arguments_passed_on_to_buildbot_are_accepted() -> None:
    """Keywords the farm classes hand to Buildbot's own classes are not reported."""
    steps.ArtifactUpload(workersrc="x", haltOnFailure=False, doStepIf=True, workdir="w")
    steps.ArtifactDownload(src="x", workerdest="y", mode=0o644, maxsize=10)
    steps.ContainerTask(image="i", command=["true"], alwaysRun=True)
    worker.FarmLatentWorker("w", max_builds=1, build_wait_timeout=0, missing_timeout=5)
    schedulers.OnDemandScheduler(name="s", builder="b", label="Tool", buttonName="Build")
    reporters.BuildRecorder(builders=["b"], service_name="records", name="app")


def test_a_missing_required_argument_is_named() -> None:
    """Leaving out a required argument is a config error naming it, not a TypeError."""
    with pytest.raises(ConfigErrors) as raised:
        steps.ArtifactUpload(dest="x")
    assert raised.value.errors == [
        "steps.ArtifactUpload: missing a required argument: 'workersrc'"
    ]


def test_an_unknown_keyword_is_collected_when_the_rest_is_usable() -> None:
    """While Buildbot collects errors, the object is still made without the unknown keyword."""
    with capture_config_errors() as errors:
        pool = util.BuildletPool("local", max_cout=2)
    assert pool == util.BuildletPool("local")
    assert [e for e in errors.errors if "max_cout" in e]


def test_a_misspelled_required_keyword_stops_at_once_with_one_message() -> None:
    """A misspelling that leaves a required argument out raises only the unknown keyword."""
    with capture_config_errors() as errors:
        steps.ArtifactUpload(workersrcs="x")
    assert len(errors.errors) == 1
    assert "unknown argument 'workersrcs' (did you mean 'workersrc'?)" in errors.errors[0]


def test_suggestions_only_for_close_words() -> None:
    """A word far from every choice gets no "did you mean"."""
    assert suggestion("pols", ["pools", "secret"]) == " (did you mean 'pools'?)"
    assert suggestion("zzz", ["pools", "secret"]) == ""
