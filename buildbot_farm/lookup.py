"""``farm_service(master)``: how steps, workers, schedulers, reporters and the www plugin
find the master's :class:`~buildbot_farm.service.FarmService`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from buildbot_farm.names import FARM_SERVICE

if TYPE_CHECKING:
    from buildbot_farm.service import FarmService

__all__ = ["farm_service"]


def farm_service(master: Any, name: str = FARM_SERVICE) -> FarmService | None:
    """The running FarmService called ``name`` on ``master``; None when there is none.

    A master without a service manager (a fake in a test, a master still being built)
    has no farm service, and neither has one whose service of that name is something else.
    """
    # Imported here: the service imports every capability, and the capabilities import this.
    from buildbot_farm.service import FarmService

    manager = getattr(master, "service_manager", None)
    services = getattr(manager, "namedServices", None)
    if not isinstance(services, dict):
        return None
    found = services.get(name)
    return found if isinstance(found, FarmService) else None
