"""Noticing this host's preemption: a signal from a shutdown hook, or a cloud's metadata service.

With ``--preemption signal|gce|aws|azure`` the agent watches for it; once noticed, ``/status``
carries ``"preempted": {"detector", "reason", "at"}`` and every answer the header
``X-Buildlet-Preempted: REASON``. A metadata service that cannot be read is never taken as
notice.
"""

from __future__ import annotations

import http.client
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from functools import partial
from typing import Callable

from buildbot_farm.remote.errors import SetupError

MAX_ANSWER_BYTES = 1024 * 1024


class MetadataError(Exception):
    """A metadata service that did not answer, or answered something unreadable: no verdict."""


class Detector:
    """Tells whether this host is being preempted; ``check`` returns the reason, or None.

    ``check`` raises MetadataError when it cannot tell; that is never taken as a preemption.
    """

    name = "detector"

    def check(self) -> str | None:
        """The reason this host is being preempted, or None while it is not."""
        raise NotImplementedError


class SignalDetector(Detector):
    """Preempted once the agent receives ``signum`` (what a spot VM's shutdown hook sends).

    ``install`` must run in the main thread, before the agent serves; ``wake`` is called
    when the signal comes, so that the watch asks at once.
    """

    name = "signal"

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self._received = threading.Event()

    def install(self, wake: Callable[[], object]) -> None:
        """Catch the signal from now on."""

        def received(*_: object) -> None:
            self._received.set()
            wake()

        signal.signal(self.signum, received)

    def check(self) -> str | None:
        """The signal's name once it came, else None."""
        if self._received.is_set():
            return f"received {signal.Signals(self.signum).name}"
        return None


class HttpDetector(Detector):
    """A detector asking a metadata service at ``base_url`` over HTTP (never through a proxy)."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def fetch(self, method: str, path: str, headers: dict[str, str],
              missing_ok: bool = False) -> bytes | None:
        """The body of a 200 answer; None for a 404 when ``missing_ok``; else MetadataError."""
        url = self.base_url + path
        request = urllib.request.Request(url, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return bytes(response.read(MAX_ANSWER_BYTES))
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            raise MetadataError(f"{method} {url} answered HTTP {exc.code}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise MetadataError(f"{method} {url} failed: {exc}") from None

    def fetch_json(self, method: str, path: str, headers: dict[str, str],
                   missing_ok: bool = False) -> dict[str, object] | None:
        """Like ``fetch``, the body read as a JSON object."""
        body = self.fetch(method, path, headers, missing_ok)
        if body is None:
            return None
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise MetadataError(f"{self.base_url}{path} answered {body[:80]!r}, not a JSON object")
        return answer


class GCEDetector(HttpDetector):
    """GCE: ``instance/preempted`` answers TRUE once the VM is being preempted."""

    name = "gce"
    PATH = "/computeMetadata/v1/instance/preempted"

    def check(self) -> str | None:
        """The reason when the flag is TRUE, None when FALSE."""
        body = self.fetch("GET", self.PATH, {"Metadata-Flavor": "Google"}) or b""
        flag = body.strip().upper()
        if flag == b"FALSE":
            return None
        if flag == b"TRUE":
            return "GCE metadata says instance/preempted is TRUE"
        raise MetadataError(f"{self.base_url}{self.PATH} answered {body[:80]!r}, not TRUE/FALSE")


class AWSDetector(HttpDetector):
    """AWS spot: ``spot/instance-action`` exists once the instance is to be stopped (IMDSv2)."""

    name = "aws"
    TOKEN_PATH = "/latest/api/token"
    ACTION_PATH = "/latest/meta-data/spot/instance-action"
    TOKEN_TTL = "300"

    def check(self) -> str | None:
        """The notice's action and time when there is one, None on 404."""
        token = self.fetch("PUT", self.TOKEN_PATH,
                           {"X-aws-ec2-metadata-token-ttl-seconds": self.TOKEN_TTL}) or b""
        notice = self.fetch_json("GET", self.ACTION_PATH,
                                 {"X-aws-ec2-metadata-token": token.decode("ascii", "replace")},
                                 missing_ok=True)
        if notice is None:
            return None
        action, when = notice.get("action"), notice.get("time")
        if action not in ("terminate", "stop", "hibernate") or not isinstance(when, str):
            raise MetadataError(f"{self.base_url}{self.ACTION_PATH} answered {notice!r}, "
                                "not an action (terminate, stop, hibernate) and a time")
        return f"AWS spot instance-action: {action} at {when}"


class AzureDetector(HttpDetector):
    """Azure: a scheduled event of type ``Preempt`` means this spot VM is being evicted."""

    name = "azure"
    PATH = "/metadata/scheduledevents?api-version=2020-07-01"

    def check(self) -> str | None:
        """The Preempt event's id and NotBefore time when there is one, else None."""
        answer = self.fetch_json("GET", self.PATH, {"Metadata": "true"}) or {}
        events = answer.get("Events")
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise MetadataError(f"{self.base_url}{self.PATH} answered {answer!r}, "
                                "without a list of Events")
        for event in events:
            if event.get("EventType") == "Preempt":
                return (f"Azure scheduled event {event.get('EventId')}: Preempt, "
                        f"not before {event.get('NotBefore') or 'now'}")
        return None


class PreemptionWatch:
    """Asks ``detector`` every ``interval`` seconds, in a thread, until it reports preemption.

    ``notice`` is None until then, and the detector's verdict afterwards (it never goes back).
    Failures to ask are logged when they start, change or stop, and never count as notice.
    """

    def __init__(self, detector: Detector, interval: float,
                 log: Callable[[str], object] = print) -> None:
        self.detector = detector
        self.interval = interval
        self.notice: dict[str, object] | None = None
        self._log = log
        self._stopped = threading.Event()
        self._woken = threading.Event()
        self._last_failure: str | None = None

    def start(self) -> None:
        """Start watching in a daemon thread."""
        threading.Thread(target=self._run, name="preemption-watch", daemon=True).start()

    def stop(self) -> None:
        """Stop watching."""
        self._stopped.set()
        self._woken.set()

    def wake(self) -> None:
        """Ask now rather than at the end of the interval."""
        self._woken.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            if self.poll():
                return
            self._woken.wait(self.interval)
            self._woken.clear()

    def poll(self) -> bool:
        """Ask the detector once; True when the host is (now) known to be preempted."""
        try:
            reason = self.detector.check()
        except MetadataError as exc:
            if str(exc) != self._last_failure:
                self._log(f"farm-remote agent: preemption check ({self.detector.name}) failed, "
                          f"not taken as a preemption; still polling: {exc}")
            self._last_failure = str(exc)
            return False
        if self._last_failure is not None:
            self._log(f"farm-remote agent: preemption check ({self.detector.name}) answers again")
            self._last_failure = None
        if reason is None:
            return False
        self.notice = {"detector": self.detector.name, "reason": reason, "at": time.time()}
        self._log(f"farm-remote agent: PREEMPTED ({self.detector.name}): {reason}")
        return True


DETECTORS = {"gce": GCEDetector, "aws": AWSDetector, "azure": AzureDetector}


def make_watch(kind: str | None, url: str | None, signal_name: str,
               interval: float) -> PreemptionWatch | None:
    """The watch the --preemption options describe (None without one); SetupError if wrong."""
    if kind is None:
        return None
    if interval <= 0:
        raise SetupError(f"--preemption-interval must be > 0 seconds, not {interval:g}")
    detector: Detector
    if kind == "signal":
        try:
            signum = signal.Signals[signal_name.upper()]
        except KeyError:
            raise SetupError(f"--preemption-signal {signal_name!r} is not a signal name "
                             "such as SIGUSR1") from None
        detector = SignalDetector(signum)
    else:
        if not url or not url.startswith(("http://", "https://")):
            raise SetupError(f"--preemption {kind} needs --preemption-url, the metadata "
                             "service's base URL, e.g. http://169.254.169.254")
        detector = DETECTORS[kind](url)
    return PreemptionWatch(detector, interval, partial(print, file=sys.stderr, flush=True))

