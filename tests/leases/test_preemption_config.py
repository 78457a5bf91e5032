"""The preemption descriptions of master.cfg: their checks, and the agent options they become."""

from __future__ import annotations

from typing import Any

import pytest

from buildbot_farm.leases.config import BuildletPool
from buildbot_farm.leases.preemption import (
    AWSPreemption,
    AzurePreemption,
    GCEPreemption,
    SignalPreemption,
    preemption_notice,
)
from buildbot_farm.remote import agent as remote_agent
from buildbot_farm.remote import preemption as detectors

DETECTOR_OF = {
    "signal": detectors.SignalDetector,
    "gce": detectors.GCEDetector,
    "aws": detectors.AWSDetector,
    "azure": detectors.AzureDetector,
}


@pytest.mark.parametrize("preemption", [
    SignalPreemption(),
    SignalPreemption("SIGTERM"),
    GCEPreemption(url="http://127.0.0.1:8080"),
    AWSPreemption(url="http://127.0.0.1:8080", interval=1),
    AzurePreemption(url="https://127.0.0.1:8443", interval=0.5),
])
def test_good_descriptions_become_options_the_agent_accepts(
    tmp_path: Any, preemption: Any
) -> None:
    """A description without problems yields agent options that start the matching detector."""
    assert preemption.problems() == []
    server, _ = remote_agent.start([
        "--listen", "127.0.0.1:0", "--workdir", str(tmp_path / "work"),
        "--secret-env", "PATH", *preemption.agent_arguments(),
    ])
    try:
        assert server.preemption is not None
        assert type(server.preemption.detector) is DETECTOR_OF[preemption.kind]
    finally:
        server.server_close()


@pytest.mark.parametrize(("preemption", "message"), [
    (SignalPreemption("SIGKILL"), "SignalPreemption: signal must be one of SIGUSR1, SIGUSR2"),
    (GCEPreemption(url="metadata.google.internal"),
     "GCEPreemption: url must be the metadata service's base URL (e.g. "
     "http://metadata.google.internal)"),
    (AWSPreemption(url="http://127.0.0.1", interval=0), "AWSPreemption: interval must be"),
    (AzurePreemption(url="http://127.0.0.1", interval="5"),  # type: ignore[arg-type]
     "AzurePreemption: interval must be"),
])
def test_bad_descriptions_name_the_argument(preemption: Any, message: str) -> None:
    """Each problem names the class and the argument to put right."""
    assert any(problem.startswith(message) for problem in preemption.problems()), (
        preemption.problems()
    )


def test_a_pool_checks_its_preemption() -> None:
    """BuildletPool reports a wrong preemption object and a bad detector under its name."""
    assert BuildletPool("spot", preemption=GCEPreemption(url="http://127.0.0.1")).problems() == []
    (wrong,) = BuildletPool("spot", preemption="gce").problems()
    assert wrong.startswith("BuildletPool spot: preemption must be one of util.SignalPreemption")
    (bad,) = BuildletPool("spot", preemption=GCEPreemption(url="nope")).problems()
    assert bad.startswith("BuildletPool spot: GCEPreemption: url must be")


def test_a_reverse_pool_refuses_preemption() -> None:
    """A reverse pool's agents are started by their hosts, so preemption there is refused."""
    (problem,) = BuildletPool(
        "hosts", provider="reverse", preemption=SignalPreemption()
    ).problems()
    assert "preemption works with the process and docker providers only" in problem


def test_the_notice_in_an_agent_status_becomes_a_reason() -> None:
    """preemption_notice reads an agent's /status: None without notice, else a reason."""
    assert preemption_notice({"preempted": None}) is None
    assert preemption_notice({}) is None
    status = {"preempted": {"detector": "aws", "reason": "AWS spot instance-action: stop at T"}}
    assert preemption_notice(status) == "preempted (aws): AWS spot instance-action: stop at T"
