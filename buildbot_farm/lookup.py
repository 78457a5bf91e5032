"""``farm_service(master)``: how steps, workers, schedulers, reporters and the www plugin
find the master's :class:`~buildbot_farm.service.FarmService`.

They sit below the service (it runs their capabilities), so they know it by what it
provides, not by importing it: :class:`IFarmService` recognises it, :class:`RunningFarm`
types the parts they use (the capability hosts' types are imported for the type checker
only, so nothing is imported at run time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

from zope.interface import Attribute, Interface

from buildbot_farm import db
from buildbot_farm.names import FARM_SERVICE
from buildbot_farm.web import FarmRoot

if TYPE_CHECKING:
    from buildbot_farm.artifacts.host import ArtifactsHost
    from buildbot_farm.ondemand.host import OnDemandHost
    from buildbot_farm.records.host import RecordsHost
    from buildbot_farm.service import FarmSettings

__all__ = ["IFarmService", "RunningFarm", "farm_service"]


class RunningFarm(Protocol):
    """The parts of a running FarmService that build-side classes use."""

    database: db.Database | None
    web_root: FarmRoot
    settings: FarmSettings | None  # the settings in effect; None before the first reconfig
    artifacts: ArtifactsHost  # its .repository is None without artifacts=
    on_demand: OnDemandHost  # its .jobs is None without on_demand=
    records: RecordsHost  # the records API and its store


class IFarmService(Interface):
    """What FarmService provides: a master's farm, found by its service name."""

    name = Attribute("The service's name in the master (``farm`` unless master.cfg says).")

    def requested_settings() -> Any:  # type: ignore[misc]
        """The FarmSettings master.cfg gave it, or None when its arguments are bad."""

    def requested_artifacts() -> Any:  # type: ignore[misc]
        """The ArtifactRepository master.cfg gave it (whatever else is wrong), or None."""


def farm_service(master: Any, name: str = FARM_SERVICE) -> RunningFarm | None:
    """The running FarmService called ``name`` on ``master``; None when there is none.

    A master without a service manager (a fake in a test, a master still being built)
    has no farm service, and neither has one whose service of that name is something else.
    """
    manager = getattr(master, "service_manager", None)
    services = getattr(manager, "namedServices", None)
    if not isinstance(services, dict):
        return None
    found = services.get(name)
    return cast(RunningFarm, found) if IFarmService.providedBy(found) else None
