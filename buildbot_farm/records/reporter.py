"""``reporters.BuildRecorder``: one immutable record per finished build."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import buildbot
from buildbot import config
from buildbot.process.properties import Properties
from buildbot.reporters import utils
from buildbot.util import service
from twisted.internet import defer
from twisted.python import log

from buildbot_farm.compat.buildbot_api import config_kwargs
from buildbot_farm.config_checks import Configuration, checked_keywords, suggestion
from buildbot_farm.lookup import farm_service
from buildbot_farm.names import ARTIFACTS_PROPERTY, FARM_SERVICE
from buildbot_farm.records.model import RESULTS, InvalidRecord, default_version, parse_record
from buildbot_farm.records.source import STYLES, choose_source, commit_url
from buildbot_farm.records.store import RecordExists, RecordStore

# create-worker writes this into info/host; it describes no host.
_HOST_PLACEHOLDER = "Please put a description"


@dataclass(frozen=True)
class RecorderSettings:
    """BuildRecorder's arguments, checked in one place for checkConfig and reconfigService."""

    record_name: Any = None
    builders: Sequence[str] | None = None
    version: Any = None
    language: Any = ""
    toolchain: Any = ""
    results: Any = ("success", "warnings")
    properties: Sequence[str] = ()
    forges: Mapping[str, str] | None = None
    farm: str = FARM_SERVICE

    def problems(self) -> list[str]:
        """What is wrong, each naming its argument; empty when fine."""
        found = []
        builders, results, properties, forges = (
            self.builders, self.results, self.properties, self.forges
        )
        if builders is not None and (
            not isinstance(builders, (list, tuple)) or not all(isinstance(b, str) for b in builders)
        ):
            found.append("builders must be a list of builder names")
        if results != "all" and (
            not isinstance(results, (list, tuple)) or not set(results) <= set(RESULTS)
        ):
            found.append(f"results must be 'all' or a list of {', '.join(RESULTS)}")
        if not isinstance(properties, (list, tuple)) or not all(
            isinstance(p, str) for p in properties
        ):
            found.append("properties must be a list of property names")
        if forges is not None and (
            not isinstance(forges, Mapping) or not set(forges.values()) <= set(STYLES)
        ):
            found.append(f"forges must map host names to one of {STYLES}")
        return found


def _configuration_problems(configuration: Configuration) -> Iterator[str]:
    """What each BuildRecorder of master.cfg needs: its FarmService, and its builders."""
    names = configuration.builder_names
    for recorder in configuration.services:
        settings = recorder.requested_settings() if isinstance(recorder, BuildRecorder) else None
        if settings is None:
            continue
        who = f"BuildRecorder {recorder.name!r}"
        if settings.farm not in configuration.farms:
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


@checked_keywords(
    "reporters.BuildRecorder",
    also=[f.name for f in fields(RecorderSettings) if f.name != "record_name"],
    cross_checks=[_configuration_problems],
)
class BuildRecorder(service.BuildbotService):
    """Writes one record of each finished build of ``builders`` (all builders when None).

    ``name`` (default: the builder's name), ``version`` (default: the UTC finish time as
    ``YYYYMMDDhhmmss``), ``language`` and ``toolchain`` (say ``go1.22.1``; a Go record
    answers it as the reference's ``GoVersion``) are renderables, rendered with the
    build's properties. ``results`` names the results that are recorded (``"all"``, or a list such
    as the default ``["success", "warnings"]``). ``properties`` are build properties added
    to the record's environment; ``forges`` maps host names to a forge style (``github``,
    ``gitlab``, ``gitea``, ``bitbucket``, ``git``) for source URLs. The records go to the
    farm service named ``farm``; ``service_name`` names this reporter.
    """

    def __init__(self, *, name: Any = None, service_name: str | None = None, **kwargs: Any):
        builders = kwargs.get("builders")
        default = "BuildRecorder" + (
            "_" + "_".join(builders) if isinstance(builders, (list, tuple)) else ""
        )
        super().__init__(name=service_name or default, record_name=name, **kwargs)

    def checkConfig(self, **kwargs: Any) -> None:
        """Refuse bad arguments with config errors naming the argument."""
        for problem in RecorderSettings(**kwargs).problems():
            config.error(f"BuildRecorder: {problem}")

    def requested_settings(self) -> RecorderSettings | None:
        """The settings this reporter's master.cfg arguments ask for (before it runs).

        None when they are not usable (checkConfig reported why).
        """
        settings = RecorderSettings(**config_kwargs(self))
        return None if settings.problems() else settings

    async def reconfigService(self, **kwargs: Any) -> None:
        """Take the new arguments; the next finished build uses them."""
        settings = RecorderSettings(**kwargs)
        self.record_name = settings.record_name
        self.builders = set(settings.builders) if settings.builders is not None else None
        self.version = settings.version
        self.language = settings.language
        self.toolchain = settings.toolchain
        self.results = set(RESULTS) if settings.results == "all" else set(settings.results)
        self.properties = list(settings.properties)
        self.forges = dict(settings.forges or {})
        self.farm = settings.farm

    async def startService(self) -> None:
        """Start listening for finished builds."""
        self._pending: set[defer.Deferred[Any]] = set()
        await super().startService()
        self._consumer = await self.master.mq.startConsuming(
            self._finished, ("builds", None, "finished")
        )

    async def stopService(self) -> None:
        """Stop listening; wait for the records being written."""
        await defer.maybeDeferred(self._consumer.stopConsuming)
        await defer.DeferredList(list(self._pending))
        await super().stopService()

    def _finished(self, key: Any, build: dict[str, Any]) -> None:
        d = defer.ensureDeferred(self.record(dict(build)))
        d.addErrback(log.err, "BuildRecorder: could not record a build")
        self._pending.add(d)
        d.addBoth(lambda _: self._pending.discard(d))

    async def record(self, build: dict[str, Any]) -> dict[str, Any] | None:
        """Record the finished ``build`` (a data API build dict) if it is wanted; return it."""
        builder = await self.master.data.get(("builders", build["builderid"]))
        if self.builders is not None and builder["name"] not in self.builders:
            return None
        result = RESULTS[build["results"]] if build.get("results") is not None else "exception"
        if result not in self.results:
            return None
        farm = farm_service(self.master, self.farm)
        database = None if farm is None else farm.database
        if database is None:
            log.msg(f"BuildRecorder: no farm service {self.farm!r} with an open database")
            return None
        await utils.getDetailsForBuild(self.master, build, want_properties=True)
        worker = await self.master.data.get(("workers", build["workerid"]))
        body = await self._body(build, builder["name"], result, worker or {})
        try:
            record = parse_record(body)
        except InvalidRecord as e:
            log.msg(f"BuildRecorder: not recording {builder['name']} #{build['number']}: {e}")
            return None
        try:
            provenance = farm.records.sign(record) if farm is not None else None
            await RecordStore(database).insert(record, self.master.reactor.seconds(), provenance)
        except RecordExists as e:
            log.msg(f"BuildRecorder: {e}; {builder['name']} #{build['number']} not recorded")
            return None
        return record.as_json()

    async def _body(
        self, build: dict[str, Any], builder: str, result: str, worker: dict[str, Any]
    ) -> dict[str, Any]:
        props = Properties.fromDict(build.get("properties") or {})
        timestamp = _seconds(build.get("complete_at")) or self.master.reactor.seconds()
        info = worker.get("workerinfo") or {}
        stamps = [dict(s) for s in build["buildset"].get("sourcestamps", [])]
        got = props.getProperty("got_revision")
        for stamp in stamps:
            if not stamp.get("revision"):
                per_codebase = isinstance(got, dict)
                stamp["revision"] = got.get(stamp.get("codebase", "")) if per_codebase else got
        source = choose_source(stamps)
        name = await props.render(self.record_name) if self.record_name is not None else builder
        version = (
            await props.render(self.version) if self.version is not None else None
        ) or default_version(timestamp)
        return {
            "name": str(name),
            "version": str(version),
            "timestamp": timestamp,
            "result": result,
            "builtOn": _host({**info, **self._live_info(worker.get("name", ""))},
                             worker.get("name", "")),
            "language": str(await props.render(self.language) or ""),
            "toolchain": str(await props.render(self.toolchain) or ""),
            "sourceUrl": (
                commit_url(source.repository, source.commit, self.forges) if source else ""
            ),
            "source": source.as_json() if source else None,
            "buildUrl": build.get("url", ""),
            "environment": self._environment(info, worker.get("name", ""), props),
            "binaries": _binaries(props.getProperty(ARTIFACTS_PROPERTY), byproducts=False),
            "byproducts": _binaries(props.getProperty(ARTIFACTS_PROPERTY), byproducts=True),
        }

    def _live_info(self, worker: str) -> dict[str, Any]:
        return _live_info_of(self.master, worker)

    def _environment(
        self, stored: dict[str, Any], worker: str, props: Properties
    ) -> dict[str, Any]:
        # The master's database keeps little of a worker's info; the live Worker object keeps
        # all of it (os-release fields, every info/* file) until its next connection.
        info = {**stored, **self._live_info(worker)}
        os_name = info.get("os_pretty_name") or " ".join(
            str(info[k]) for k in ("os_id", "os_version_id") if info.get(k)
        ) or info.get("system", "")
        environment: dict[str, Any] = {
            "worker": worker,
            "os": os_name,
            "worker_version": info.get("version", ""),
            "buildbot_version": buildbot.version,
        }
        # Buildbot's worker info carries no architecture or Python version: FarmLatentWorker
        # adds them as info/arch and info/python, and other workers' admins can do the same.
        for key in ("arch", "python"):
            if isinstance(info.get(key), str):
                environment[key] = info[key].strip()
        for name in self.properties:
            value = props.getProperty(name)
            scalar = value is None or isinstance(value, (str, int, float, bool))
            environment[name] = value if scalar else json.dumps(value, sort_keys=True)
        return environment


def _live_info_of(master: Any, worker: str) -> dict[str, Any]:
    live = getattr(getattr(master, "workers", None), "workers", {}).get(worker)
    if live is None:
        return {}
    return {key: value for key, (value, _source) in live.info.asDict().items()}


def _host(info: dict[str, Any], worker: str) -> str:
    """The host that ran the build: FarmLatentWorker's info/hostname, else the admin's
    info/host, else the worker's HOSTNAME, else the worker's name."""
    hostname = str(info.get("hostname") or "").strip()
    if hostname:
        return hostname
    host = str(info.get("host") or "").strip().splitlines()
    if host and not host[0].startswith(_HOST_PLACEHOLDER):
        return host[0]
    environ = info.get("environ") or {}
    return str(environ.get("HOSTNAME") or worker)


def _binaries(artifacts: Any, byproducts: bool) -> list[Any]:
    """The build's artifacts that are binaries, or (``byproducts``) the by-products."""
    if not isinstance(artifacts, list):
        return []
    return [
        {k: a.get(k) for k in ("path", "url", "size", "sha256")} if isinstance(a, dict) else a
        for a in artifacts
        if (isinstance(a, dict) and bool(a.get("byproduct"))) == byproducts
    ]


def _seconds(moment: Any) -> float | None:
    if isinstance(moment, datetime.datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        return moment.timestamp()
    if isinstance(moment, (int, float)):
        return float(moment)
    return None
