"""The cross-object checks: what one farm object of master.cfg needs from the others.

Each check reads the configuration dict as master.cfg left it (before Buildbot normalises
it), skips what it cannot read (Buildbot reports malformed parts itself) and reports each
mistake with ``config.error``, naming the object, the argument and what to do.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from buildbot import config

from buildbot_farm.artifacts.build_tokens import unmatched_token_builders
from buildbot_farm.artifacts.steps import ArtifactDownload, ArtifactToken, ArtifactUpload
from buildbot_farm.compat.buildbot_api import steps_of
from buildbot_farm.config_checks._keywords import suggestion
from buildbot_farm.dashboard import farm_dashboard
from buildbot_farm.leases.worker import FarmLatentWorker
from buildbot_farm.names import FARM_SERVICE, WWW_PLUGIN
from buildbot_farm.ondemand.scheduler import OnDemandScheduler
from buildbot_farm.records.reporter import BuildRecorder
from buildbot_farm.service import FarmService, FarmSettings

ADD_ARTIFACTS = "give util.FarmService(artifacts=util.ArtifactRepository()) in c['services']"
ADD_ON_DEMAND = "give util.FarmService(on_demand=util.OnDemandBuilds()) in c['services']"
NEEDS_ARTIFACTS = (ArtifactToken, ArtifactUpload, ArtifactDownload)
REMOTE = "or give this worker coordinator_url=, user= and key= of another farm's coordinator"


@dataclass(frozen=True)
class Configuration:
    """The parts of a configuration dict the checks read, each tolerant of malformed input."""

    services: list[Any]
    farms: dict[str, FarmSettings | None]
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
                   if isinstance(s, FarmService)},
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


def check(config_dict: Mapping[str, Any]) -> None:
    """Report every cross-object mistake of ``config_dict`` as a config error."""
    configuration = Configuration.of(config_dict)
    for problem in problems(configuration):
        config.error(problem)


def problems(configuration: Configuration) -> Iterator[str]:
    """Every cross-object mistake of ``configuration``, one message each."""
    yield from _latent_worker_problems(configuration)
    yield from _token_builder_problems(configuration)
    yield from _recorder_problems(configuration)
    yield from _www_problems(configuration)
    yield from _step_problems(configuration)
    yield from _scheduler_problems(configuration)


def _latent_worker_problems(configuration: Configuration) -> Iterator[str]:
    farms = configuration.farms
    for worker in configuration.workers:
        if not isinstance(worker, FarmLatentWorker):
            continue
        lease = worker.requested_lease()
        if lease is None or lease.coordinator_url is not None:
            continue
        who = f"FarmLatentWorker {worker.name!r}"
        if lease.farm not in farms:
            yield (f"{who}: leases from the coordinator of the FarmService {lease.farm!r} (its"
                   f" farm= argument), but c['services'] has no util.FarmService named"
                   f" {lease.farm!r}: add util.FarmService(name={lease.farm!r},"
                   f" coordinator=util.FarmCoordinator(...)) to c['services'], {REMOTE}")
            continue
        settings = farms[lease.farm]
        if settings is None:
            continue
        coordinator = settings.coordinator
        if coordinator is None:
            yield (f"{who}: the FarmService {lease.farm!r} in c['services'] runs no coordinator"
                   f" to lease from: give it coordinator=util.FarmCoordinator(secret=...,"
                   f" pools=[util.BuildletPool(...)]), {REMOTE}")
            continue
        wanted = lease.buildlet_type
        pools = [getattr(pool, "name", None) for pool in coordinator.pools]
        if isinstance(wanted, str) and wanted not in pools:
            names = [p for p in pools if isinstance(p, str)]
            yield (f"{who}: buildlet_type {wanted!r} is not a pool of the coordinator of the"
                   f" FarmService {lease.farm!r}; its pools are {', '.join(names) or 'none'}"
                   f"{suggestion(wanted, names)}: use one of them, or add"
                   f" util.BuildletPool({wanted!r}) to its FarmCoordinator(pools=[...])")


def _token_builder_problems(configuration: Configuration) -> Iterator[str]:
    for name, settings in configuration.farms.items():
        artifacts = settings.artifacts if settings is not None else None
        if artifacts is None or not artifacts.token_builders:
            continue
        problem = unmatched_token_builders(configuration.builder_names, artifacts.token_builders)
        if problem is not None:
            yield f"FarmService {name!r}: {problem}"


def _recorder_problems(configuration: Configuration) -> Iterator[str]:
    farms = configuration.farms
    names = configuration.builder_names
    for recorder in configuration.services:
        if not isinstance(recorder, BuildRecorder):
            continue
        settings = recorder.requested_settings()
        if settings is None:
            continue
        who = f"BuildRecorder {recorder.name!r}"
        if settings.farm not in farms:
            yield (f"{who}: records go to the FarmService {settings.farm!r} (its farm="
                   f" argument), but c['services'] has no util.FarmService named"
                   f" {settings.farm!r}: add util.FarmService(name={settings.farm!r}) to"
                   " c['services']")
        # Like Buildbot's own scheduler check: with several masters, builders may be elsewhere.
        for builder in () if configuration.multi_master else settings.builders or ():
            if builder not in names:
                yield (f"{who}: builders names {builder!r}, which is not a builder in"
                       f" c['builders']{suggestion(builder, names)}; the builders are"
                       f" {configuration.builders_text()}: correct the name, or leave out"
                       " builders= to record the builds of every builder")


def _www_problems(configuration: Configuration) -> Iterator[str]:
    plugins = configuration.www_plugins
    dashboards = plugins.get("wsgi_dashboards")
    menus = [d for d in _list(dashboards)
             if isinstance(d, Mapping) and d.get("app") is farm_dashboard]
    if menus and WWW_PLUGIN not in plugins:
        yield ("farm_menu() in c['www']['plugins']['wsgi_dashboards'] shows the pages the farm"
               " www plugin serves, but that plugin is not enabled: add"
               " c['www']['plugins']['farm'] = {} (its menu would show \"No Such Resource\")")
    if WWW_PLUGIN in plugins:
        plugin = plugins[WWW_PLUGIN]
        service = str(plugin.get("service", FARM_SERVICE)) if isinstance(
            plugin, Mapping) else FARM_SERVICE
        if service not in configuration.farms:
            yield (f"c['www']['plugins']['farm'] serves the FarmService {service!r}, but"
                   f" c['services'] has no util.FarmService named {service!r}: add"
                   f" util.FarmService(name={service!r}) to c['services']")


def _missing_capability(configuration: Configuration, argument: str) -> str | None:
    """Why the FarmService steps and schedulers use lacks ``argument``; None when it has it.

    None too when that service's arguments are bad: checkConfig reported those already.
    """
    farms = configuration.farms
    if FARM_SERVICE not in farms:
        return f"c['services'] has no util.FarmService named {FARM_SERVICE!r}"
    settings = farms[FARM_SERVICE]
    if settings is None or getattr(settings, argument) is not None:
        return None
    return f"the FarmService {FARM_SERVICE!r} has no {argument}= argument"


def _step_problems(configuration: Configuration) -> Iterator[str]:
    missing = _missing_capability(configuration, "artifacts")
    if missing is None:
        return
    for builder, factory in configuration.builders:
        steps = [f"{name!r} (steps.{step_class.__name__})"
                 for step_class, name in steps_of(factory)
                 if issubclass(step_class, NEEDS_ARTIFACTS)]
        if steps:
            verb = "needs" if len(steps) == 1 else "need"
            yield (f"builder {builder!r}: step{'s' if len(steps) > 1 else ''}"
                   f" {', '.join(steps)} {verb} the artifact repository, but {missing}:"
                   f" {ADD_ARTIFACTS}")


def _scheduler_problems(configuration: Configuration) -> Iterator[str]:
    missing = _missing_capability(configuration, "on_demand")
    if missing is None:
        return
    for scheduler in configuration.schedulers:
        if isinstance(scheduler, OnDemandScheduler):
            yield (f"OnDemandScheduler {scheduler.name!r}: on-demand builds are off, as"
                   f" {missing}: {ADD_ON_DEMAND}")


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else []


__all__ = ["Configuration", "check", "problems"]
