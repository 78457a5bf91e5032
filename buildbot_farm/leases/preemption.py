"""How a pool's buildlets notice their host's preemption, as master.cfg describes it.

``util.BuildletPool("spot", preemption=util.GCEPreemption(url="http://metadata.google.internal"))``
makes every buildlet of the pool run its agent with a detector: a signal from the host's
shutdown hook (:class:`SignalPreemption`), or the cloud's metadata service
(:class:`GCEPreemption`, :class:`AWSPreemption`, :class:`AzurePreemption`). The detectors
themselves live in the stdlib-only agent, which runs on the host whose metadata they read;
these descriptions only check their arguments and turn into the agent's command line.

Once the agent notices, its ``/status`` says ``"preempted"``; ``FarmLatentWorker`` sees that
at its next keepalive, stops taking builds, sets ``PREEMPTED_PROPERTY`` on the running build
and releases the buildlet, which ends that build RETRY.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from buildbot_farm.config_checks import checked_keywords
from buildbot_farm.config_checks.values import is_positive

# The build property FarmLatentWorker sets on a build whose buildlet was preempted: the reason.
PREEMPTED_PROPERTY = "farm_preempted"

# Signals a shutdown hook can send without killing the agent first; SIGTERM is allowed (the
# agent then stays up until halted), SIGKILL and SIGSTOP cannot be caught.
CATCHABLE_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGHUP", "SIGTERM")


def preemption_notice(status: dict[str, Any]) -> str | None:
    """The reason in an agent's ``/status`` answer when its host is being preempted, else None."""
    notice = status.get("preempted")
    if not isinstance(notice, dict):
        return None
    return f"preempted ({notice.get('detector', '?')}): {notice.get('reason', 'no reason given')}"


@checked_keywords("util.SignalPreemption")
@dataclass(frozen=True)
class SignalPreemption:
    """Preempted once the agent receives ``signal``: ``util.SignalPreemption("SIGUSR1")``.

    For hosts whose shutdown hook can signal the agent
    (e.g. ``pkill -USR1 -f 'farm-remote.*pyz agent'``).
    """

    signal: str = "SIGUSR1"
    kind: ClassVar[str] = "signal"

    def problems(self) -> list[str]:
        """What is wrong, each naming its argument."""
        if self.signal not in CATCHABLE_SIGNALS:
            return [f"SignalPreemption: signal must be one of {', '.join(CATCHABLE_SIGNALS)}, "
                    f"not {self.signal!r}"]
        return []

    def agent_arguments(self) -> list[str]:
        """The agent's command-line options for this detector."""
        return ["--preemption", self.kind, "--preemption-signal", self.signal]


@dataclass(frozen=True)
class _MetadataPreemption:
    """A detector that polls the metadata service at ``url`` every ``interval`` seconds.

    ``url`` is the service's base URL and has no default, so that nothing is ever asked of a
    real metadata address by accident.
    """

    url: str
    interval: float = 5.0
    kind: ClassVar[str] = ""
    example: ClassVar[str] = ""

    def problems(self) -> list[str]:
        """What is wrong, each naming its argument."""
        found = []
        name = type(self).__name__
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            found.append(f"{name}: url must be the metadata service's base URL "
                         f"(e.g. {self.example}), not {self.url!r}")
        if not is_positive(self.interval):
            found.append(f"{name}: interval must be a number of seconds > 0")
        return found

    def agent_arguments(self) -> list[str]:
        """The agent's command-line options for this detector."""
        return ["--preemption", self.kind, "--preemption-url", self.url,
                "--preemption-interval", f"{self.interval:g}"]


@checked_keywords("util.GCEPreemption")
@dataclass(frozen=True)
class GCEPreemption(_MetadataPreemption):
    """GCE spot/preemptible VMs: ``instance/preempted`` turns TRUE.

    ``util.GCEPreemption(url="http://metadata.google.internal")``.
    """

    kind: ClassVar[str] = "gce"
    example: ClassVar[str] = "http://metadata.google.internal"


@checked_keywords("util.AWSPreemption")
@dataclass(frozen=True)
class AWSPreemption(_MetadataPreemption):
    """AWS spot instances: an IMDSv2 ``spot/instance-action`` notice appears.

    ``util.AWSPreemption(url="http://169.254.169.254")``.
    """

    kind: ClassVar[str] = "aws"
    example: ClassVar[str] = "http://169.254.169.254"


@checked_keywords("util.AzurePreemption")
@dataclass(frozen=True)
class AzurePreemption(_MetadataPreemption):
    """Azure spot VMs: a scheduled event of type ``Preempt`` appears.

    ``util.AzurePreemption(url="http://169.254.169.254")``.
    """

    kind: ClassVar[str] = "azure"
    example: ClassVar[str] = "http://169.254.169.254"


PREEMPTION_TYPES = (SignalPreemption, GCEPreemption, AWSPreemption, AzurePreemption)


def preemption_problems(preemption: object, owner: str) -> list[str]:
    """What is wrong with a ``preemption=`` argument of ``owner`` (None is fine)."""
    if preemption is None:
        return []
    if not isinstance(preemption, PREEMPTION_TYPES):
        names = ", ".join(f"util.{t.__name__}" for t in PREEMPTION_TYPES)
        return [f"{owner}: preemption must be one of {names}, not {preemption!r}"]
    return [f"{owner}: {problem}" for problem in preemption.problems()]
