"""``util.FarmService``: the one master-side service of the farm.

It owns the farm database (migrated at start), the HTTP root mounted at
``/plugins/farm/``, and the periodic work. Capabilities find it through the master::

    farm = buildbot_farm.lookup.farm_service(master)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Protocol

from buildbot import config
from buildbot.util import service
from twisted.internet import defer
from twisted.python import log
from zope.interface import implementer

from buildbot_farm import __version__, db
from buildbot_farm.api_documents import farm_documents
from buildbot_farm.artifacts.build_tokens import token_builder_problems
from buildbot_farm.artifacts.config import ArtifactRepository
from buildbot_farm.artifacts.host import ArtifactsHost
from buildbot_farm.compat.buildbot_api import config_kwargs
from buildbot_farm.config_checks import checked_keywords
from buildbot_farm.config_checks.values import is_positive, is_whole_at_least
from buildbot_farm.containers import reap_leftovers
from buildbot_farm.dashboard import DashboardResource
from buildbot_farm.dashboard._menu import www_problems
from buildbot_farm.leases.config import FarmCoordinator
from buildbot_farm.leases.coordinator import Coordinator
from buildbot_farm.leases.host import LeasesHost
from buildbot_farm.leases.providers.docker_hosts import docker_hosts_status
from buildbot_farm.lookup import IFarmService
from buildbot_farm.masters import MasterTable
from buildbot_farm.names import FARM_SERVICE
from buildbot_farm.ondemand.api import OnDemandAPI
from buildbot_farm.ondemand.config import OnDemandBuilds
from buildbot_farm.ondemand.host import OnDemandHost
from buildbot_farm.ondemand.model import is_build_key
from buildbot_farm.periodic import PeriodicTask
from buildbot_farm.records.api import BuildAlias
from buildbot_farm.records.config import BuildRecords
from buildbot_farm.records.host import RecordsHost
from buildbot_farm.secret_values import SecretRenderer, is_renderable
from buildbot_farm.web import FarmRoot, OpenAPIResource
from buildbot_farm.web.status import OPENAPI, StatusAPI

DEFAULT_DB_URL = "sqlite:///farm.sqlite"


class _CheckedSettings(Protocol):
    def problems(self) -> list[str]: ...


@dataclass(frozen=True)
class FarmSettings:
    """FarmService's arguments, checked in one place for checkConfig and reconfigService."""

    # A renderable (util.Interpolate("postgresql://farm:%(secret:farm-db)s@db/farm")) keeps
    # a PostgreSQL password out of master.cfg.
    db_url: Any = field(default=DEFAULT_DB_URL, repr=False)
    db_pool_size: int = 4
    db_timeout: float = 30.0
    heartbeat_interval: float = 30.0
    coordinator: FarmCoordinator | None = None
    # Docker engines whose container-task leftovers of this master are removed at start;
    # None is the master's default engine (DOCKER_HOST or the local socket).
    container_engines: Any = (None,)
    records: BuildRecords | None = None
    artifacts: ArtifactRepository | None = None
    on_demand: OnDemandBuilds | None = None

    def problems(self) -> list[str]:
        """What is wrong with these settings, each naming its argument; empty when fine."""
        found = []
        if not is_renderable(self.db_url):
            try:
                db.parse_db_url(self.db_url)
            except db.InvalidDatabaseURL as e:
                found.append(str(e))
        for name in ("db_pool_size",):
            value = getattr(self, name)
            if not is_whole_at_least(value, 1):
                found.append(f"{name} must be a whole number >= 1, not {value!r}")
        for name in ("db_timeout", "heartbeat_interval"):
            value = getattr(self, name)
            if not is_positive(value):
                found.append(f"{name} must be a number of seconds > 0, not {value!r}")
        capabilities: tuple[tuple[str, type[_CheckedSettings]], ...] = (
            ("coordinator", FarmCoordinator),
            ("records", BuildRecords),
            ("artifacts", ArtifactRepository),
            ("on_demand", OnDemandBuilds),
        )
        for name, kind in capabilities:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, kind):
                found += value.problems()
            else:
                found.append(f"{name} must be a util.{kind.__name__}(...)")
        engines = self.container_engines
        if not isinstance(engines, (list, tuple)) or not all(
            e is None or (isinstance(e, str) and "://" in e) for e in engines
        ):
            found.append(
                "container_engines must be a list of Docker engine URLs (None: the default"
                f" engine), not {engines!r}"
            )
        return found

    async def with_secrets(self, render: Callable[[Any], Awaitable[Any]]) -> FarmSettings:
        """These settings with every secret rendered by ``render`` (``renderSecrets``).

        Raises ConfigErrors naming each secret that cannot be rendered or renders to an
        unusable value (never showing the value); see ``buildbot_farm.secret_values``.
        """
        secrets = SecretRenderer(render)
        db_url = await secrets.text(self.db_url, "db_url")
        if db_url is not self.db_url:
            try:
                db.parse_db_url(db_url)
            except db.InvalidDatabaseURL:
                secrets.fail("db_url", self.db_url, "a URL the farm cannot use (sqlite:///FILE"
                             " or postgresql://USER:PASSWORD@HOST:PORT/DBNAME)")
        rendered = dataclasses.replace(
            self,
            db_url=db_url,
            coordinator=self.coordinator and await self.coordinator.with_secrets(secrets),
            records=self.records and await self.records.with_secrets(secrets),
            artifacts=self.artifacts and await self.artifacts.with_secrets(secrets),
            on_demand=self.on_demand and await self.on_demand.with_secrets(secrets),
        )
        if secrets.errors:
            raise config.ConfigErrors([f"FarmService: {e}" for e in secrets.errors])
        return rendered

    def database_settings(self) -> tuple[Any, ...]:
        """The part that needs a new database connection when it changes."""
        return (self.db_url, self.db_pool_size, self.db_timeout)


_SETTING_NAMES = tuple(f.name for f in fields(FarmSettings))


@checked_keywords("util.FarmService", also=("name", *_SETTING_NAMES),
                  cross_checks=[token_builder_problems, www_problems])
@implementer(IFarmService)
class FarmService(service.BuildbotService):
    """The build farm's service on this master; put one in ``c['services']``.

    ``db_url`` is ``sqlite:///farm.sqlite`` (relative to the master's basedir, the default)
    or ``postgresql://user:password@host:port/dbname`` for several masters sharing one
    farm. ``db_pool_size`` PostgreSQL connections serve it; a database call that gets no
    answer within ``db_timeout`` seconds fails. The service records itself in the farm
    database every ``heartbeat_interval`` seconds, so other masters know it is alive.
    With ``coordinator=util.FarmCoordinator(...)`` it also runs a buildlet coordinator,
    served at ``/plugins/farm/coordinator``. ``records=util.BuildRecords(...)`` sets the keys
    and signing key of the build records API at ``/plugins/farm/api/builds``.
    Every secret among these arguments (``db_url``, the coordinator's secret, the records'
    keys, the signing keys, the S3 keys) may be a string or ``util.Secret(...)`` /
    ``util.Interpolate(...)``, rendered with the master's secret providers at each
    (re)config, before anything is applied.
    """

    name = FARM_SERVICE

    def __init__(self, **kwargs: Any) -> None:
        self.database: db.Database | None = None
        self.settings: FarmSettings | None = None
        self.web_root = FarmRoot()
        # The coordinator with coordinator=util.FarmCoordinator(...)
        self.leases = LeasesHost(self)
        self.artifacts = ArtifactsHost(self)
        # /plugins/farm/api/: the JSON APIs of the capabilities (records, on-demand builds)
        self.api_root = FarmRoot()
        self._periodic: dict[str, PeriodicTask] = {}
        self.records = RecordsHost(self, lambda: self.artifacts.repository)
        super().__init__(**kwargs)
        self.api_root.mount("builds", self.records.resource, openapi="openapi.json")
        self.api_root.mount("openapi.json", self.records.openapi)
        self.api_root.mount("records-chain", self.records.chain, openapi="openapi.json")
        self.on_demand = OnDemandHost(self)
        on_demand = OnDemandAPI(self.on_demand)

        def on_demand_configured() -> bool:
            return self.on_demand.jobs is not None

        # /build/NAME is the reference build service's spelling of /builds/NAME; on-demand
        # job keys (64 hex digits) and POST /build are the on-demand API's.
        document = "../openapi/ondemand.json"
        self.api_root.mount(
            "build",
            BuildAlias(self.records.resource, on_demand.resource("build"), is_build_key),
            openapi=document, active=on_demand_configured,
        )
        for name in ("download", "compat"):
            self.api_root.mount(
                name, on_demand.resource(name), openapi=document, active=on_demand_configured
            )
        status = StatusAPI(
            lambda: self.database, __version__, lambda: docker_hosts_status(self.coordinator)
        )
        self.web_root.mount("status", status.resource(), openapi="openapi.json")
        self.web_root.mount("openapi.json", OpenAPIResource(OPENAPI))
        # every API's document, at openapi/NAME.json; a directory of documents, not an API
        self.web_root.mount("openapi", farm_documents(), active=lambda: False)
        self.web_root.mount("api", self.api_root)
        self.web_root.mount("ui", DashboardResource(self))

    @property
    def coordinator(self) -> Coordinator | None:
        """The running buildlet coordinator (what the dashboard uses); None without one."""
        return self.leases.coordinator

    def requested_settings(self) -> FarmSettings | None:
        """The settings this instance's master.cfg arguments ask for (before it runs).

        None when they are not usable (checkConfig reported why).
        """
        settings = FarmSettings(**config_kwargs(self))
        return None if settings.problems() else settings

    def requested_artifacts(self) -> ArtifactRepository | None:
        """The repository this instance's master.cfg arguments ask for (before it runs)."""
        wanted = config_kwargs(self).get("artifacts")
        return wanted if isinstance(wanted, ArtifactRepository) else None

    def checkConfig(self, **kwargs: Any) -> None:
        """Refuse bad arguments with config errors that name the argument.

        Unknown keywords never get here: :func:`checked_keywords` reports them.
        """
        for problem in FarmSettings(**kwargs).problems():
            config.error(f"FarmService: {problem}")

    async def reconfigService(self, **kwargs: Any) -> None:
        """Render the secrets, then apply the settings: (re)open the database when its
        settings changed."""
        settings = await FarmSettings(**kwargs).with_secrets(self.renderSecrets)
        previous, self.settings = self.settings, settings
        database_changed = (
            previous is None or previous.database_settings() != settings.database_settings()
        )
        if database_changed:
            await self._open_database(settings)
        await self.leases.configure(settings.coordinator)
        await self.records.configure(settings.records)
        await self.artifacts.configure(settings.artifacts)
        await self.on_demand.configure(settings.on_demand)
        self.add_periodic("heartbeat", settings.heartbeat_interval, self._heartbeat)

    async def _open_database(self, settings: FarmSettings) -> None:
        try:
            database = await db.connect(
                settings.db_url,
                self.master.reactor,
                basedir=self.master.basedir,
                pool_size=settings.db_pool_size,
                timeout=settings.db_timeout,
            )
        except db.DatabaseError as e:
            raise config.ConfigErrors([f"FarmService: db_url: {e}"]) from e
        old, self.database = self.database, database
        log.msg(f"farm: database {database.url.redacted()} ready")
        if old is not None:
            await old.stop()

    def add_periodic(
        self, name: str, interval: float, work: Callable[[], Awaitable[Any]], now: bool = True
    ) -> PeriodicTask:
        """Run ``work`` every ``interval`` seconds while the service runs.

        Adding a task under an existing name replaces it. Runs are on the master's clock,
        never overlap, and a failing run is logged without stopping the next.
        """
        periodic = PeriodicTask(name, interval, work, self.master.reactor)
        old = self._periodic.pop(name, None)
        if old is not None:
            old.stop()
        self._periodic[name] = periodic
        if self.running:
            periodic.start(now=now)
        return periodic

    def remove_periodic(self, name: str) -> defer.Deferred[Any] | None:
        """Stop and forget the task ``name``; the result fires once a run in progress ended."""
        periodic = self._periodic.pop(name, None)
        return None if periodic is None else periodic.stop()

    async def _heartbeat(self) -> None:
        if self.database is None:
            return
        await MasterTable(self.database).heartbeat(
            self.master.name, self.master.reactor.seconds(), __version__
        )

    def startService(self) -> defer.Deferred[None]:
        """Open the database (via the first reconfig), then start the periodic work."""
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        await super().startService()
        if self.settings is not None:
            await reap_leftovers(
                self.master.reactor, self.master.name, self.settings.container_engines
            )
        for periodic in self._periodic.values():
            periodic.start()

    def stopService(self) -> defer.Deferred[None]:
        """Stop the periodic work, forget this master's heartbeat, close the database."""
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        for periodic in self._periodic.values():
            await periodic.stop()
        await self.leases.stop()
        await self.artifacts.stop()
        await self.on_demand.stop()
        await self.records.stop()
        if self.database is not None:
            database, self.database = self.database, None
            try:
                await MasterTable(database).forget(self.master.name)
            except db.DatabaseError as e:
                log.msg(f"farm: could not remove this master's heartbeat: {e}")
            await database.stop()
        # A start that failed in its first reconfig never marked the service running; the
        # master still stops it, and Buildbot's service checks would add a second traceback
        # ("already stopped") after the one that says why the start failed.
        if self.running:
            await super().stopService()
