"""``/plugins/farm/ui/``: the dashboard's pages, served by the farm service.

* ``buildlets`` — the pools, their Docker hosts (up or down), every lease, and the latest
  buildlets lost with their hosts;
  ``POST buildlets/destroy`` (form ``name=`` and the page's ``form_token``) destroys one,
  allowed by Buildbot's authz rules for the action ``destroy`` on
  ``("farm", "buildlets", NAME)``
  (``util.AnyControlEndpointMatcher(role="admins")`` covers it)
* ``artifacts/PATH/`` — the repository's collections, sizes, sha256 and download links,
  and the builds holding a live upload token
* ``records`` (``?name=&version=&commit=``) and ``records/NAME/VERSION`` — build records
* ``jobs`` — on-demand jobs and their attempts

A page reloads itself while something it shows is in progress.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from buildbot.www.authz.authz import Forbidden
from markupsafe import Markup
from twisted.python import failure, log
from twisted.web import resource
from twisted.web.server import Request

from buildbot_farm import db
from buildbot_farm.dashboard import _pages as pages
from buildbot_farm.dashboard._artifacts import artifacts_page
from buildbot_farm.dashboard._authz import FARM_ENDPOINT
from buildbot_farm.dashboard._builds import BuildLinks
from buildbot_farm.dashboard._forms import FIELD, FormRefused, FormTokens, user_of
from buildbot_farm.dashboard._jobs import jobs_body
from buildbot_farm.leases.model import LeaseState
from buildbot_farm.leases.pools import CoordinatorError
from buildbot_farm.leases.providers.docker_hosts import docker_hosts_status
from buildbot_farm.records.store import Query
from buildbot_farm.web import ApiError, respond
from buildbot_farm.web._request import query_args, query_last

if TYPE_CHECKING:
    from buildbot_farm.artifacts.host import ArtifactsHost
    from buildbot_farm.leases.coordinator import Coordinator
    from buildbot_farm.ondemand.host import OnDemandHost
    from buildbot_farm.records.host import RecordsHost

RECORDS_PAGE_SIZE = 100
LOST_SHOWN = 20  # the latest buildlets lost with their hosts, on the Buildlets page
DESTROY_ACTION = "destroy"
DESTROY_FORM = "buildlets/destroy"

_COORDINATOR_CFG = """util.FarmService(
    coordinator=util.FarmCoordinator(
        secret="a-long-random-secret",
        pools=[util.BuildletPool("local", provider="process", max_count=4, warm=1)],
    ),
)"""
_RECORDS_CFG = """c["services"].append(reporters.BuildRecorder(
    builders=["my-builder"], name="my-project",
    version=util.Interpolate("1.0.%(prop:buildnumber)s")))"""


class DashboardFarm(Protocol):
    """What the dashboard reads of the running FarmService."""

    @property
    def master(self) -> Any:
        """The Buildbot master (its clock, its www for authz, its data for build links)."""

    @property
    def coordinator(self) -> Coordinator | None:
        """The running buildlet coordinator; None without one."""

    @property
    def artifacts(self) -> ArtifactsHost:
        """The artifact repository's host."""

    @property
    def records(self) -> RecordsHost:
        """The records API's host."""

    @property
    def on_demand(self) -> OnDemandHost:
        """The on-demand builds' host."""


class DashboardResource(resource.Resource):
    """Serves the dashboard pages of ``farm`` (the running FarmService).

    ``form_tokens`` signs the admin forms' CSRF tokens (a new random secret when None).
    """

    isLeaf = True

    def __init__(self, farm: DashboardFarm, form_tokens: FormTokens | None = None) -> None:
        super().__init__()
        self._farm = farm
        self._form_tokens = form_tokens or FormTokens()

    def render(self, request: Request) -> int:
        """Answer asynchronously; any failure becomes a readable error page."""
        return respond(request, lambda: self._page(request), "the farm dashboard")

    async def _page(self, request: Request) -> bytes:
        try:
            body = await self._answer(request)
        except Exception:
            body = self._failed(failure.Failure(), request)
        if body:
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return body

    async def _answer(self, request: Request) -> bytes:
        segments = [s.decode(errors="replace") for s in request.postpath or []]
        while segments and segments[-1] == "":
            segments.pop()
        if not segments:
            request.redirect(self._base(request).encode() + b"buildlets")
            return b""
        head, rest = segments[0], segments[1:]
        method = request.method
        if method == b"GET":
            await self._allowed(request, (FARM_ENDPOINT, *segments), "get", "see this page")
        if head == "buildlets" and not rest and method == b"GET":
            return await self._buildlets(request)
        if head == "buildlets" and rest == ["destroy"] and method == b"POST":
            return await self._destroy(request)
        if head == "artifacts" and method == b"GET":
            return await artifacts_page(self._farm.artifacts.repository, rest,
                                        self._frame(request, "artifacts"),
                                        self._links(request), self._now())
        if head == "records" and len(rest) in (0, 2) and method == b"GET":
            return await self._records(request, rest)
        if head == "jobs" and not rest and method == b"GET":
            return await self._jobs(request)
        raise ApiError(404, f"the farm dashboard has no page {'/'.join(segments)!r}"
                             f" for {method.decode()}; use the tabs above")

    def _base(self, request: Request) -> str:
        return "/" + "/".join(p.decode() for p in request.prepath or []) + "/"

    def _frame(self, request: Request, tab: str) -> pages.Frame:
        return pages.Frame(self._base(request), tab)

    def _links(self, request: Request) -> BuildLinks:
        """Links into Buildbot's web UI, whose root is two levels above the dashboard."""
        return BuildLinks(self._farm.master, self._base(request).rsplit("plugins/farm/ui/", 1)[0])

    def _now(self) -> float:
        return float(self._farm.master.reactor.seconds())

    async def _allowed(
        self, request: Request, endpoint: tuple[str, ...], action: str, what: str
    ) -> None:
        """Raise a 403 ApiError unless Buildbot's authz lets this user do ``action``."""
        try:
            await self._farm.master.www.assertUserAllowed(request, endpoint, action, {})
        except Forbidden as e:
            raise ApiError(403, f"you may not {what}: {_text(e.message)};"
                                 " log in as a user with that role") from e

    async def _buildlets(self, request: Request, message: Markup | None = None) -> bytes:
        frame = self._frame(request, "buildlets")
        coordinator = self._farm.coordinator
        if coordinator is None:
            return pages.page(frame, "Buildlets", pages.empty_state(
                "This farm runs no buildlet coordinator.", _COORDINATOR_CFG))
        leases = sorted(await coordinator.table.all(), key=lambda lease: lease.name)
        now = self._now()
        pools = [
            {"name": t.name, "provider": t.provider.kind, "max_count": t.max_count,
             "warm": t.warm, "count": sum(1 for lease in leases if lease.type == t.name),
             "idle": sum(1 for lease in leases
                         if lease.type == t.name and lease.state is LeaseState.IDLE)}
            for t in sorted(coordinator.types.values(), key=lambda t: t.name)
        ]
        lost = await coordinator.table.lost_of(limit=LOST_SHOWN)
        body = pages.render(
            "buildlets.html", message=message, pools=pools, leases=leases, lost=lost, now=now,
            hosts=docker_hosts_status(coordinator),
            destroy_action=self._base(request) + DESTROY_FORM, token_field=FIELD,
            token=self._form_tokens.issue(user_of(request), DESTROY_FORM, now))
        busy = any(lease.state in (LeaseState.STARTING, LeaseState.HALTING) for lease in leases)
        return pages.page(frame, "Buildlets", body,
                          refresh=pages.REFRESH_SECONDS if busy else 0)

    async def _destroy(self, request: Request) -> bytes:
        form = query_args(request)
        names = form.get("name", [])
        if len(names) != 1 or not names[0]:
            raise ApiError(400, "say which buildlet to destroy: one form field name=NAME")
        name = names[0]
        presented = form.get(FIELD, [""])[0]
        try:
            self._form_tokens.check(user_of(request), DESTROY_FORM, presented, self._now())
        except FormRefused as e:
            raise ApiError(403, f"refused to destroy {name}: {e}") from e
        coordinator = self._farm.coordinator
        if coordinator is None:
            raise ApiError(404, "this farm runs no buildlet coordinator")
        await self._allowed(request, (FARM_ENDPOINT, "buildlets", name), DESTROY_ACTION,
                            "destroy buildlets")
        if await coordinator.table.get(name) is None:
            raise ApiError(404, f"no buildlet named {name}: it expired or was destroyed")
        try:
            await coordinator.destroy(name)
        except CoordinatorError as e:
            raise ApiError(e.status, f"destroying {name} failed: {e}") from e
        log.msg(f"farm dashboard: buildlet {name} destroyed from the web UI")
        return await self._buildlets(request, pages.message("notice", f"Destroyed {name}."))

    async def _records(self, request: Request, rest: list[str]) -> bytes:
        frame = self._frame(request, "records")
        store = self._farm.records.store()
        if store is None:
            raise ApiError(503, "the farm database is closed; see the master's log")
        if rest:
            return await self._record(request, frame, store, rest[0], rest[1])
        args = {k: v.strip() for k, v in query_last(request).items()}
        name, version, commit = (args.get(k) or None for k in ("name", "version", "commit"))
        found, _ = await store.list(Query(name=name, commit=commit), RECORDS_PAGE_SIZE)
        documents = [json.loads(r.document) for r in found]
        if version:
            documents = [d for d in documents if d.get("version") == version]
        body = pages.render("records.html", args=args, documents=documents, base=frame.base,
                            config_lines=_RECORDS_CFG)
        running = await self._links(request).any_running()
        return pages.page(frame, "Records", body,
                          refresh=pages.RECORDS_REFRESH_SECONDS if running else 0)

    async def _record(
        self, request: Request, frame: pages.Frame, store: Any, name: str, version: str
    ) -> bytes:
        stored = await store.get(name, version)
        if stored is None:
            raise ApiError(404, f"no record {name} {version}")
        record = json.loads(stored.document)
        api = (frame.base.rsplit("ui/", 1)[0] + "api/builds/"
               + quote(name, safe="") + "/" + quote(version, safe=""))
        body = pages.render(
            "record.html", record=record, api=api, tombstone=stored.tombstone,
            attested=any(b.get("sha256") for b in record.get("binaries", [])),
            binaries=record.get("binaries", []))
        return pages.page(frame, f"Record {name} {version}", body)

    async def _jobs(self, request: Request) -> bytes:
        base = self._base(request)
        api = base.rsplit("ui/", 1)[0] + "api/"
        body, busy = await jobs_body(self._farm.on_demand, self._links(request), api)
        return pages.page(self._frame(request, "jobs"), "On-demand jobs", body,
                          refresh=pages.REFRESH_SECONDS if busy else 0)

    def _failed(self, reason: failure.Failure, request: Request) -> bytes:
        error = reason.value
        refresh = 0
        if isinstance(error, ApiError):
            fields = "".join(f"; {name}: {problem}" for name, problem in error.fields.items())
            status, message = error.status, error.message + fields
        elif isinstance(error, db.DatabaseError):
            log.err(reason, "farm dashboard: the farm database failed")
            status, message = 503, (f"the farm database failed: {error}; this page reloads"
                                    " until it answers (the master's log has the details)")
            refresh = pages.REFRESH_SECONDS
        else:
            log.err(reason, "farm dashboard page failed")
            status, message = 500, f"the farm service failed: {error}; its log has the details"
        request.setResponseCode(status)
        tab = (request.postpath or [b""])[0].decode(errors="replace")
        return pages.page(self._frame(request, tab), "Error", pages.message("error", message),
                          refresh=refresh)


def _text(message: bytes | str) -> str:
    return message.decode(errors="replace") if isinstance(message, bytes) else message
