"""The parts of a configuration dict that the cross-object checks read.

Each cross-object check belongs to the farm class it is about (a worker's check beside the
worker, a step's beside the step) and reads the configuration through
:class:`Configuration`, which knows none of those classes: this package stays below every
capability, which all import it for their keyword checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from buildbot_farm.lookup import IFarmService
from buildbot_farm.names import FARM_SERVICE

# A cross-object check: every mistake it finds in a configuration, one message each.
CrossCheck = Callable[["Configuration"], Iterator[str]]


@dataclass(frozen=True)
class Configuration:
    """The parts of a configuration dict the checks read, each tolerant of malformed input."""

    services: list[Any]
    farms: dict[str, Any]
    workers: list[Any]
    builders: list[tuple[str, Any]]
    schedulers: list[Any]
    www_plugins: Mapping[str, Any]
    multi_master: bool

    @classmethod
    def of(cls, config_dict: Mapping[str, Any]) -> Configuration:
        """Read ``config_dict`` (what master.cfg assigned to ``BuildmasterConfig``)."""
        builders = []
        for builder in _list(config_dict.get("builders")):
            # c['builders'] holds util.BuilderConfig objects or dicts of their arguments.
            parts = builder if isinstance(builder, dict) else getattr(builder, "__dict__", {})
            name = parts.get("name")
            if isinstance(name, str):
                builders.append((name, parts.get("factory")))
        www = config_dict.get("www")
        plugins = www.get("plugins") if isinstance(www, Mapping) else None
        services = _list(config_dict.get("services"))
        return cls(
            services=services,
            # The FarmServices by name, with their settings (None when their arguments are
            # bad: checkConfig reported why).
            farms={s.name: s.requested_settings() for s in services
                   if IFarmService.providedBy(s)},
            workers=_list(config_dict.get("workers")),
            builders=builders,
            schedulers=_list(config_dict.get("schedulers")),
            www_plugins=plugins if isinstance(plugins, Mapping) else {},
            multi_master=bool(config_dict.get("multiMaster")),
        )

    @property
    def builder_names(self) -> list[str]:
        """The names of ``c['builders']``."""
        return [name for name, _ in self.builders]

    def builders_text(self) -> str:
        """The builder names for a message."""
        return ", ".join(sorted(self.builder_names)) or "none"

    def missing_capability(self, argument: str) -> str | None:
        """Why the FarmService that steps and schedulers use lacks ``argument``; None when it
        has it, or when that service's arguments are bad (checkConfig reported those)."""
        if FARM_SERVICE not in self.farms:
            return f"c['services'] has no util.FarmService named {FARM_SERVICE!r}"
        settings = self.farms[FARM_SERVICE]
        if settings is None or getattr(settings, argument) is not None:
            return None
        return f"the FarmService {FARM_SERVICE!r} has no {argument}= argument"


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


__all__ = ["Configuration", "CrossCheck"]
