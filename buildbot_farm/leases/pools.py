"""The vocabulary of buildlet pools: their types, and the errors the coordinator answers with.

Each error carries the HTTP status that says it (``status``); the coordinator's API and the
web UI turn them into answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from buildbot_farm.leases.model import Lease, check_type
from buildbot_farm.leases.providers.base import BuildletProvider

WARM_OWNER_PREFIX = "warm"
REVERSE = "reverse"
# Seconds between handing out a warm buildlet and starting its replacement: the replacement's
# start (a container, an agent, its pre-started worker's imports) would otherwise take CPU
# from the worker attaching to the buildlet just leased.
REFILL_DELAY = 1.0
# A lease in use is renewed (one database write) at most once per this many seconds, or per
# a tenth of the idle timeout if that is shorter; while a proxied request to it is open (a
# long exec), it is renewed that often too.
RENEW_EVERY = 30.0
# How many lost buildlets each coordinator remembers (in the database), to say why.
LOST_KEPT = 1000

# What claiming a pool's capacity gives: a warm buildlet, leased, or the name of a STARTING row.
Claim = Union[Lease, str]


@dataclass(frozen=True)
class BuildletType:
    """One kind of buildlet a user can ask for: where it comes from and how many may exist.

    ``max_count`` bounds the buildlets of this type (leased, idle or starting); ``warm``
    idle ones are kept ready so that a lease is near-instant.
    """

    name: str
    provider: BuildletProvider
    max_count: int = 4
    warm: int = 0

    def __post_init__(self) -> None:
        check_type(self.name)
        if self.max_count < 1 or not 0 <= self.warm <= self.max_count:
            raise ValueError(
                f"buildlet type {self.name}: need max_count >= 1 and 0 <= warm <= max_count"
            )


class CoordinatorError(Exception):
    """A request the coordinator refuses; ``status`` is the HTTP status that says so."""

    status = 400


class UnknownType(CoordinatorError):
    """No buildlet type of that name is configured."""


class PoolFull(CoordinatorError):
    """Every buildlet of the type is in use; try again after ``retry_after`` seconds."""

    status = 503
    retry_after = 30


class NoHostFree(PoolFull):
    """A ``reverse`` type has no registered host free right now."""


class NoSuchBuildlet(CoordinatorError):
    """No live buildlet of that name (never was, or expired, or destroyed)."""

    status = 502


def no_such_buildlet(name: str) -> str:
    """What NoSuchBuildlet says about ``name`` (the proxy says the same of others' buildlets)."""
    return f"no live buildlet named {name!r}: it expired or was destroyed"


class BuildletNotStarted(CoordinatorError):
    """The provider could not start a buildlet (an image the engine lacks, a master
    directory the buildlet user could read, ...); the message says why and what to do."""

    status = 500


class NotYours(CoordinatorError):
    """The buildlet is leased to someone else."""

    status = 403
