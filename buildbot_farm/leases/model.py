"""A buildlet lease: its states, its name, and when it expires (pure logic).

States and transitions::

    STARTING --ready--> IDLE (warm, nobody's) --leased--> LEASED
    STARTING --ready for a waiting user--> LEASED
    LEASED --halt, expiry--> HALTING --destroyed--> (row gone)
    any state --provider says it is dead--> (row gone)
"""

from __future__ import annotations

import datetime
import enum
import re
from dataclasses import dataclass

TYPE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class LeaseState(enum.Enum):
    """Where a buildlet is in its life."""

    STARTING = "starting"
    IDLE = "idle"
    LEASED = "leased"
    HALTING = "halting"


@dataclass(frozen=True)
class ExpiryPolicy:
    """A lease ends ``idle_timeout`` seconds after its last use, and ``max_lifetime`` after
    it was leased, whichever comes first."""

    idle_timeout: float = 30 * 60
    max_lifetime: float = 12 * 60 * 60

    def expires_at(self, leased_at: float, renewed_at: float) -> float:
        """When a lease leased at ``leased_at`` and last used at ``renewed_at`` ends."""
        return min(renewed_at + self.idle_timeout, leased_at + self.max_lifetime)


def buildlet_name(user: str, buildlet_type: str, number: int) -> str:
    """The gomote-style name ``user-NAME-TYPE-N``."""
    return f"{user}-{buildlet_type}-{number}"


def check_type(buildlet_type: str) -> None:
    """Raise ValueError unless ``buildlet_type`` is a plausible type name."""
    if not TYPE_PATTERN.match(buildlet_type):
        raise ValueError(
            f"buildlet type {buildlet_type!r} must be lower-case letters, digits, '.', '_', '-'"
        )


@dataclass(frozen=True)
class Lease:
    """One buildlet as the coordinator records it.

    ``url`` and ``secret`` reach its agent; ``handle`` is the provider's own reference
    (a process id, a container id, a registration), opaque to everything else.
    """

    name: str
    type: str
    state: LeaseState
    owner: str | None
    url: str
    secret: str
    handle: str
    created_at: float
    leased_at: float | None
    renewed_at: float | None
    expires_at: float | None

    def public(self) -> dict[str, object]:
        """The fields a client sees (gomote's names): Name, Type, Created, Expires."""
        return {
            "Name": self.name,
            "Type": self.type,
            "Created": _rfc3339(self.leased_at or self.created_at),
            "Expires": _rfc3339(self.expires_at) if self.expires_at is not None else None,
        }


@dataclass(frozen=True)
class LostLease:
    """A buildlet lost with its host: whose lease it was, and why (``host build1: ...``)."""

    name: str
    type: str
    owner: str | None
    reason: str
    lost_at: float

    def public(self) -> dict[str, object]:
        """What its lessee sees: Name, Type, Lost (when), Reason."""
        return {"Name": self.name, "Type": self.type, "Lost": _rfc3339(self.lost_at),
                "Reason": self.reason}


def _rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
