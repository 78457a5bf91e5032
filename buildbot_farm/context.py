"""``FarmContext``: what a capability running inside FarmService may use of it.

Each capability's host (``leases/host.py``, ``artifacts/host.py``, ``ondemand/host.py``,
``records/host.py``) is handed the service as a FarmContext, so it depends on these few
parts, not on the whole service; a test hands it
:class:`~buildbot_farm.testing.FakeFarmContext`. The clock is the master's
(``farm.master.reactor``), as Buildbot wants it; secrets are rendered by FarmService before
a host's settings reach it; the farm's names are in :mod:`buildbot_farm.names`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Callable, Protocol

from twisted.internet import defer

from buildbot_farm import db
from buildbot_farm.web import FarmRoot

__all__ = ["FarmContext", "MountingFarmContext"]


class FarmContext(Protocol):
    """The master, the farm database (None until open) and the periodic work."""

    @property
    def master(self) -> Any:
        """The Buildbot master the farm runs in."""

    @property
    def database(self) -> db.Database | None:
        """The farm database; None while it is not open."""

    def add_periodic(
        self, name: str, interval: float, work: Callable[[], Awaitable[Any]]
    ) -> object:
        """Run ``work`` every ``interval`` seconds while the farm runs (replacing ``name``)."""

    def remove_periodic(self, name: str) -> defer.Deferred[Any] | None:
        """Stop the task ``name``; the result fires once a run in progress ended."""


class MountingFarmContext(FarmContext, Protocol):
    """A FarmContext that also serves HTTP resources under ``/plugins/farm/``."""

    @property
    def web_root(self) -> FarmRoot:
        """The root the farm's resources are mounted on."""
