"""The agent's preemption detectors against a stub metadata service on 127.0.0.1, and the agent
reporting a notice in /status."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildbot_farm.remote.preemption import (
    AWSDetector,
    AzureDetector,
    GCEDetector,
    MetadataError,
    PreemptionWatch,
)
from tests.harness.ports import free_port
from tests.remote.metadata_stub import MetadataStub
from tests.remote.test_buildlet_agent import AGENT, AGENT_PYTHON, RunningAgent, start_agent

GCE = "/computeMetadata/v1/instance/preempted"
AWS_TOKEN = "/latest/api/token"
AWS_ACTION = "/latest/meta-data/spot/instance-action"
AZURE = "/metadata/scheduledevents?api-version=2020-07-01"


@pytest.fixture
def stub() -> Iterator[MetadataStub]:
    """A metadata stub, stopped afterwards."""
    with MetadataStub() as running:
        yield running


def down_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


def test_gce_false_is_no_notice_and_true_is_preemption(stub: MetadataStub) -> None:
    """GCE's preempted flag: FALSE means nothing, TRUE a notice; the Google header is sent."""
    detector = GCEDetector(stub.url)
    stub.answer("GET", GCE, 200, "FALSE")
    assert detector.check() is None
    stub.answer("GET", GCE, 200, "TRUE")
    assert "instance/preempted is TRUE" in (detector.check() or "")
    assert all(r.headers.get("metadata-flavor") == "Google" for r in stub.seen("GET", GCE))


@pytest.mark.parametrize(("status", "body", "message"), [
    (200, "maybe", "not TRUE/FALSE"),
    (500, "oops", "answered HTTP 500"),
    (404, "", "answered HTTP 404"),
])
def test_gce_unreadable_answers_are_errors_not_notices(
    stub: MetadataStub, status: int, body: str, message: str
) -> None:
    """A GCE answer that is not TRUE/FALSE raises MetadataError naming what came back."""
    stub.answer("GET", GCE, status, body)
    with pytest.raises(MetadataError, match=message):
        GCEDetector(stub.url).check()


def test_aws_uses_an_imdsv2_token_and_404_is_no_notice(stub: MetadataStub) -> None:
    """AWS: a token is PUT for, sent with the GET, and a 404 instance-action means no notice."""
    stub.answer("PUT", AWS_TOKEN, 200, "tok-123")
    assert AWSDetector(stub.url).check() is None
    (put,) = stub.seen("PUT", AWS_TOKEN)
    assert int(put.headers["x-aws-ec2-metadata-token-ttl-seconds"]) > 0
    (get,) = stub.seen("GET", AWS_ACTION)
    assert get.headers["x-aws-ec2-metadata-token"] == "tok-123"


@pytest.mark.parametrize("action", ["terminate", "stop"])
def test_aws_instance_action_is_a_notice(stub: MetadataStub, action: str) -> None:
    """An instance-action JSON notice is preemption; its action and time are in the reason."""
    stub.answer("PUT", AWS_TOKEN, 200, "tok")
    stub.answer("GET", AWS_ACTION, 200,
                json.dumps({"action": action, "time": "2026-11-22T05:00:00Z"}))
    reason = AWSDetector(stub.url).check()
    assert reason == f"AWS spot instance-action: {action} at 2026-11-22T05:00:00Z"


@pytest.mark.parametrize(("token", "body", "message"), [
    ((200, "tok"), "<html>", "not a JSON object"),
    ((200, "tok"), json.dumps({"action": "reboot", "time": "x"}), "not an action"),
    ((401, "no"), "", "answered HTTP 401"),
])
def test_aws_unreadable_answers_are_errors_not_notices(
    stub: MetadataStub, token: tuple[int, str], body: str, message: str
) -> None:
    """A failed token request or an unreadable notice raises MetadataError, not a notice."""
    stub.answer("PUT", AWS_TOKEN, *token)
    stub.answer("GET", AWS_ACTION, 200, body)
    with pytest.raises(MetadataError, match=message):
        AWSDetector(stub.url).check()


def test_azure_only_a_preempt_event_is_a_notice(stub: MetadataStub) -> None:
    """Azure: no events or other event types mean nothing; a Preempt event is a notice."""
    detector = AzureDetector(stub.url)
    stub.answer("GET", AZURE, 200, json.dumps({"DocumentIncarnation": 1, "Events": []}))
    assert detector.check() is None
    freeze = {"EventId": "A", "EventType": "Freeze", "NotBefore": ""}
    stub.answer("GET", AZURE, 200, json.dumps({"Events": [freeze]}))
    assert detector.check() is None
    preempt = {"EventId": "B", "EventType": "Preempt", "NotBefore": "Sun, 22 Nov 2026 05:00 GMT"}
    stub.answer("GET", AZURE, 200, json.dumps({"Events": [freeze, preempt]}))
    assert detector.check() == (
        "Azure scheduled event B: Preempt, not before Sun, 22 Nov 2026 05:00 GMT"
    )
    assert all(r.headers.get("metadata") == "true" for r in stub.seen("GET", AZURE))


@pytest.mark.parametrize("body", ["[]", json.dumps({"Events": "none"}), "not json"])
def test_azure_unreadable_answers_are_errors_not_notices(stub: MetadataStub, body: str) -> None:
    """An Azure answer without a list of events raises MetadataError."""
    stub.answer("GET", AZURE, 200, body)
    with pytest.raises(MetadataError):
        AzureDetector(stub.url).check()


def test_a_down_service_is_an_error_not_a_notice() -> None:
    """Nothing listening at the URL raises MetadataError for every detector."""
    for detector in (GCEDetector(down_url()), AWSDetector(down_url()),
                     AzureDetector(down_url())):
        with pytest.raises(MetadataError, match="failed"):
            detector.check()


def test_the_watch_logs_failures_once_keeps_polling_and_latches_a_notice(
    stub: MetadataStub,
) -> None:
    """Failures are logged when they start and stop, never taken as notice; a notice stays."""
    lines: list[str] = []
    watch = PreemptionWatch(GCEDetector(stub.url), 1.0, lines.append)
    stub.answer("GET", GCE, 200, "garbage")
    assert not watch.poll()
    assert not watch.poll()
    assert len(lines) == 1
    assert "failed, not taken as a preemption; still polling" in lines[0]
    stub.answer("GET", GCE, 200, "FALSE")
    assert not watch.poll()
    assert "answers again" in lines[1]
    assert watch.notice is None
    stub.answer("GET", GCE, 200, "TRUE")
    assert watch.poll()
    assert watch.notice is not None
    assert watch.notice["detector"] == "gce"
    assert "PREEMPTED (gce)" in lines[-1]


def wait_for_status(agent: RunningAgent, predicate: Any, within: float = 10.0) -> Any:
    """Poll the agent's /status until ``predicate(body)`` holds; the status body."""
    deadline = time.monotonic() + within
    body: Any = None
    while time.monotonic() < deadline:
        _, body = agent.json("GET", "/status")
        if predicate(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"the agent's status never matched: {body}")


def test_the_agent_reports_a_gce_notice_after_the_service_comes_back(
    tmp_path: Path, stub: MetadataStub
) -> None:
    """The agent polls; a down service is logged and ignored; TRUE later shows in /status."""
    port = free_port()
    agent = start_agent(tmp_path, "--preemption", "gce", "--preemption-url",
                        f"http://127.0.0.1:{port}", "--preemption-interval", "0.2")
    try:
        time.sleep(0.5)
        _, headers, body = agent.request("GET", "/status")
        assert json.loads(body)["preempted"] is None
        assert "X-Buildlet-Preempted" not in headers
        with MetadataStub(port) as restarted:
            restarted.answer("GET", GCE, 200, "TRUE")
            notice = wait_for_status(agent, lambda b: b["preempted"])["preempted"]
            assert notice["detector"] == "gce"
            _, headers, _ = agent.request("GET", "/status")
            assert "instance/preempted is TRUE" in headers["X-Buildlet-Preempted"]
    finally:
        assert agent.stop() == 0
    log = (tmp_path / "agent.log").read_text()
    assert "preemption check (gce) failed, not taken as a preemption; still polling" in log
    assert "PREEMPTED (gce)" in log


def test_the_agent_reports_a_signal_notice(tmp_path: Path) -> None:
    """With --preemption signal, SIGUSR2 marks the agent preempted at once; it keeps serving."""
    agent = start_agent(tmp_path, "--preemption", "signal", "--preemption-signal", "SIGUSR2",
                        "--preemption-interval", "600")
    try:
        assert agent.json("GET", "/status")[1]["preempted"] is None
        agent.proc.send_signal(signal.SIGUSR2)
        notice = wait_for_status(agent, lambda b: b["preempted"], within=3)["preempted"]
        assert notice == {"detector": "signal", "reason": "received SIGUSR2", "at": notice["at"]}
    finally:
        assert agent.stop() == 0


@pytest.mark.parametrize(("options", "message"), [
    (["--preemption", "gce"], "needs --preemption-url"),
    (["--preemption", "aws", "--preemption-url", "169.254.169.254"], "needs --preemption-url"),
    (["--preemption", "signal", "--preemption-signal", "SIGNOPE"], "is not a signal name"),
    (["--preemption", "azure", "--preemption-url", "http://127.0.0.1:1",
      "--preemption-interval", "0"], "must be > 0"),
])
def test_bad_preemption_options_stop_the_agent_with_a_message(
    tmp_path: Path, options: list[str], message: str
) -> None:
    """Wrong --preemption options exit 2 at startup with a message naming the option."""
    (tmp_path / "secret").write_text("s")
    done = subprocess.run(
        [AGENT_PYTHON, *AGENT, "--listen", "127.0.0.1:0", "--workdir",
         str(tmp_path / "work"), "--secret-file", str(tmp_path / "secret"), *options],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "work").exists(), "a refused start left a workdir behind"
