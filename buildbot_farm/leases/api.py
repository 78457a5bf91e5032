"""The coordinator's HTTP API (gomote's protocol): create, list, and the buildlet proxy.

* ``POST /buildlet/create`` (form ``type=``) -> ``{"Name", "Type", "Created", "Expires"}``;
  with ``wait=SECONDS`` a full pool puts the create in line, and the answer is a stream of
  JSON lines (see :meth:`CoordinatorAPI._create_waiting`)
* ``GET /buildlet/list`` -> the caller's buildlets
* any request with ``X-Buildlet-Proxy: NAME`` -> forwarded to that buildlet's agent
  (``POST /halt`` destroys the buildlet instead)

Every request authenticates with HTTP Basic as ``user-NAME`` and that user's key (a proxied
request may also name the user ``buildlet-NAME``, as Go's remote-buildlet document does). A
buildlet that is not the caller's answers exactly as one that does not exist. Every answer
carries ``X-Buildlet-Coordinator: 1``, so that a client told a wrong URL can say so.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, task
from twisted.python import failure, log
from twisted.web import resource
from twisted.web.server import Request

from buildbot_farm.compat.twisted_web import disconnected
from buildbot_farm.leases import keys
from buildbot_farm.leases.bulk_relay import BulkRelays
from buildbot_farm.leases.coordinator import Coordinator
from buildbot_farm.leases.model import Lease
from buildbot_farm.leases.pools import (
    CoordinatorError,
    NoSuchBuildlet,
    NotYours,
    PoolFull,
    no_such_buildlet,
)
from buildbot_farm.leases.proxy import forward, proxy_failed
from buildbot_farm.web import ApiError, Routes, json_response, respond
from buildbot_farm.web._request import finite_number, query_args

PROXY_HEADER = b"x-buildlet-proxy"
COORDINATOR_HEADER = b"x-buildlet-coordinator"
# The longest a create waits in line (a longer wait= is cut to it).
MAX_WAIT = 3600.0
# Seconds between the status lines of a waiting create: they keep proxies (nginx's
# proxy_read_timeout is 60 s) from cutting a quiet stream.
HEARTBEAT = 15.0
STREAM_TYPE = b"application/x-ndjson; charset=utf-8"


class CoordinatorAPI:
    """The coordinator's routes; :class:`CoordinatorResource` serves them (mount it anywhere).

    ``secret`` is the coordinator secret the users' keys derive from; ``reactor`` is the one
    the proxy connects to the agents on; ``relays`` run the large downloads it relays
    (default: :class:`~buildbot_farm.leases.bulk_relay.BulkRelays` with its defaults).
    """

    routes: Routes[CoordinatorAPI] = Routes(
        "coordinator", hint="or send X-Buildlet-Proxy: NAME to talk to a buildlet")

    def __init__(self, coordinator: Coordinator, secret: bytes, reactor: Any,
                 relays: BulkRelays | None = None) -> None:
        self._coordinator = coordinator
        self._secret = secret
        self._reactor = reactor
        self._relays = BulkRelays() if relays is None else relays

    async def answer(self, request: Request) -> bytes | None:
        """Authenticate ``request``, then proxy it or answer it through the routes."""
        request.setHeader(COORDINATOR_HEADER, b"1")
        target = request.getHeader(PROXY_HEADER)
        try:
            user = keys.authenticate(
                self._secret, request.getHeader(b"authorization"), proxied=bool(target)
            )
        except keys.BadCredentials as e:
            raise ApiError(401, str(e), headers={
                b"www-authenticate": b'Basic realm="buildbot_farm coordinator"'}) from e
        try:
            if target:
                return await self._proxy(request, user, target.decode(errors="replace"))
            answer: bytes | None = await self.routes.dispatch(self, request, user=user)
            return answer
        except CoordinatorError as e:
            headers = {b"retry-after": str(e.retry_after).encode()} if isinstance(
                e, PoolFull) else {}
            raise ApiError(e.status, str(e), headers=headers) from e

    @routes.route("POST", "buildlet/create")
    async def create(self, request: Request, user: str) -> bytes | None:
        """Lease a buildlet of form field ``type``; ``wait=SECONDS`` waits in line."""
        form = query_args(request)
        types = form.get("type", [])
        if len(types) != 1 or not types[0]:
            raise ApiError(400, "give exactly one form field type=TYPE, e.g. type=local",
                           {"type": "required, once"})
        waits = form.get("wait", [])
        wait = _seconds(waits[-1]) if waits else 0.0
        if wait is None:
            raise ApiError(400, "wait= must be a number of seconds >= 0, e.g. wait=600",
                           {"wait": "a number of seconds >= 0"})
        type_name = types[0]
        if wait > 0:
            await self._create_waiting(request, user, type_name, min(wait, MAX_WAIT))
            return None
        lease = await self._coordinator.create(user, type_name)
        return json_response(request, lease.public())

    async def _create_waiting(
        self, request: Request, user: str, type_name: str, wait: float
    ) -> None:
        """Create, waiting in line up to ``wait`` s; answer 200 and a stream of JSON lines.

        ``{"status": {"ahead": N}}`` each time the place in line changes, and again every
        ``HEARTBEAT`` seconds once in line; then one last line, ``{"buildlet": {"Name", ...}}`` or
        ``{"error": MESSAGE, "code": HTTP_STATUS}`` (with ``"retry_after"`` when the pool
        stayed full). Errors found before waiting (an unknown type) are plain HTTP errors.
        A client that disconnects leaves the line.
        """
        last: list[int] = []

        def status(ahead: int) -> None:
            last[:] = [ahead]
            _write_line(request, {"status": {"ahead": ahead}})

        result = self._coordinator.create_waiting(user, type_name, wait, status)
        request.setHeader(b"content-type", STREAM_TYPE)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")  # nginx: pass each line on at once
        request.notifyFinish().addErrback(lambda _: result.cancel())

        def beat() -> None:
            if last:
                status(last[0])

        heartbeat = task.LoopingCall(beat)
        heartbeat.clock = self._coordinator.clock
        heartbeat.start(HEARTBEAT, now=False)
        try:
            lease: Lease = await result
        except defer.CancelledError:
            return
        except CoordinatorError as e:
            details: dict[str, Any] = {"error": str(e), "code": e.status}
            if isinstance(e, PoolFull):
                details["retry_after"] = e.retry_after
            _write_line(request, details, last=True)
            return
        except Exception as e:
            log.err(None, "coordinator: a waiting create failed")
            _write_line(request, {"error": f"the coordinator failed: {e}; its log has the details",
                                  "code": 500}, last=True)
            return
        finally:
            heartbeat.stop()
        if disconnected(request):
            await self._coordinator.destroy(lease.name)
            return
        _write_line(request, {"buildlet": lease.public()}, last=True)

    @routes.route("POST", "buildlet/register")
    async def register(self, request: Request, user: str) -> bytes:
        """A reverse buildlet joins: form fields ``type``, ``url`` and ``secret``."""
        form = query_args(request)
        values = {k: form.get(k, []) for k in ("type", "url", "secret")}
        missing = [k for k, v in values.items() if len(v) != 1 or not v[0]]
        if missing:
            raise ApiError(400, f"give exactly one of each form field: {missing}",
                           {k: "required, once" for k in missing})
        type_name, url, secret = (values[k][0] for k in values)
        lease = await self._coordinator.register(type_name, url, secret)
        return json_response(request, lease.public())

    @routes.route("GET", "buildlet/list")
    async def owned(self, request: Request, user: str) -> bytes:
        """The caller's buildlets."""
        leases = await self._coordinator.owned(user)
        return json_response(request, [lease.public() for lease in leases])

    @routes.route("GET", "buildlet/lost")
    async def lost(self, request: Request, user: str) -> bytes:
        """The caller's buildlets lost with their hosts, newest first, with why."""
        leases = await self._coordinator.lost_of(user)
        return json_response(request, [lease.public() for lease in leases])

    async def _proxy(self, request: Request, user: str, target: str) -> bytes | None:
        segments = request.postpath or []
        path = "/" + "/".join(segment.decode(errors="replace") for segment in segments)
        try:
            lease = await self._coordinator.use(user, target)
        except NotYours:
            # the same answer as for a buildlet that does not exist, so names cannot be probed
            raise NoSuchBuildlet(no_such_buildlet(target)) from None
        if path == "/halt" and request.method == b"POST":
            await self._coordinator.destroy(lease.name)
            return json_response(request, {"halted": lease.name})
        query = request.uri.partition(b"?")[2]
        full_path = path.encode() + (b"?" + query if query else b"")
        release = self._coordinator.hold(lease.name)  # the lease stays renewed while this runs
        try:
            await forward(request, self._reactor, lease.url, lease.secret, full_path,
                          self._relays)
        except Exception:
            proxy_failed(request, failure.Failure(), lease.name)
        finally:
            release()
        _finish(request)
        return None


class CoordinatorResource(resource.Resource):
    """The coordinator's API (:class:`CoordinatorAPI`) as a leaf resource to mount or serve."""

    isLeaf = True

    def __init__(self, coordinator: Coordinator, secret: bytes, reactor: Any,
                 relays: BulkRelays | None = None) -> None:
        super().__init__()
        self.api = CoordinatorAPI(coordinator, secret, reactor, relays)

    def render(self, request: Request) -> int:
        """Authenticate, then answer asynchronously."""
        return respond(request, lambda: self.api.answer(request), "the coordinator")


def _seconds(value: str) -> float | None:
    """``value`` as a number of seconds >= 0, or None if it is not one."""
    seconds = finite_number(value)
    return seconds if seconds is not None and seconds >= 0 else None


def _write_line(request: Request, message: dict[str, Any], last: bool = False) -> None:
    if not request.finished and not disconnected(request):
        request.write(json.dumps(message).encode() + b"\n")
    if last:
        _finish(request)


def _finish(request: Request) -> None:
    if not request.finished and not disconnected(request):
        request.finish()
