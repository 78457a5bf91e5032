"""The coordinator's HTTP API (gomote's protocol): create, list, and the buildlet proxy.

* ``POST /buildlet/create`` (form ``type=``) -> ``{"Name", "Type", "Created", "Expires"}``
* ``GET /buildlet/list`` -> the caller's buildlets
* any request with ``X-Buildlet-Proxy: NAME`` -> forwarded to that buildlet's agent
  (``POST /halt`` destroys the buildlet instead)

Every request authenticates with HTTP Basic as ``user-NAME`` and that user's key (a proxied
request may also name the user ``buildlet-NAME``, as Go's remote-buildlet document does). A
buildlet that is not the caller's answers exactly as one that does not exist. Every answer
carries ``X-Buildlet-Coordinator: 1``, so that a client told a wrong URL can say so.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.python import failure, log
from twisted.web import resource, server
from twisted.web.server import Request

from buildbot_farm.leases import keys
from buildbot_farm.leases.coordinator import (
    Coordinator,
    CoordinatorError,
    NoSuchBuildlet,
    NotYours,
    PoolFull,
    no_such_buildlet,
)
from buildbot_farm.leases.proxy import forward, proxy_failed
from buildbot_farm.web import json_error, json_response

PROXY_HEADER = b"x-buildlet-proxy"
COORDINATOR_HEADER = b"x-buildlet-coordinator"


class CoordinatorResource(resource.Resource):
    """Serves the coordinator's API; mount it anywhere (it routes on the path below it).

    ``secret`` is the coordinator secret the users' keys derive from; ``reactor`` is the one
    the proxy connects to the agents on.
    """

    isLeaf = True

    def __init__(self, coordinator: Coordinator, secret: bytes, reactor: Any) -> None:
        super().__init__()
        self._coordinator = coordinator
        self._secret = secret
        self._reactor = reactor

    def render(self, request: Request) -> int:
        """Authenticate, then answer asynchronously."""
        request.setHeader(COORDINATOR_HEADER, b"1")
        d = defer.ensureDeferred(self._answer(request))
        d.addErrback(self._failed, request)
        d.addBoth(lambda _: _finish(request))
        return server.NOT_DONE_YET

    async def _answer(self, request: Request) -> None:
        target = request.getHeader(PROXY_HEADER)
        try:
            user = keys.authenticate(
                self._secret, request.getHeader(b"authorization"), proxied=bool(target)
            )
        except keys.BadCredentials as e:
            request.setHeader(b"www-authenticate", b'Basic realm="buildbot_farm coordinator"')
            request.write(json_error(request, 401, str(e)))
            return
        segments = request.postpath or []
        path = "/" + "/".join(segment.decode(errors="replace") for segment in segments)
        if target:
            await self._proxy(request, user, target.decode(errors="replace"), path)
        elif path == "/buildlet/create":
            await self._create(request, user)
        elif path == "/buildlet/list":
            await self._list(request, user)
        elif path == "/buildlet/register":
            await self._register(request)
        else:
            request.write(
                json_error(
                    request, 404,
                    f"no coordinator API at {path}: use POST /buildlet/create, "
                    f"GET /buildlet/list, or a request with X-Buildlet-Proxy",
                )
            )

    async def _create(self, request: Request, user: str) -> None:
        if request.method != b"POST":
            request.write(json_error(request, 405, "use POST /buildlet/create with form type=..."))
            return
        types: list[bytes] = request.args.get(b"type", []) if request.args else []
        if len(types) != 1 or not types[0]:
            request.write(
                json_error(request, 400, "give exactly one form field type=TYPE, e.g. type=local")
            )
            return
        lease = await self._coordinator.create(user, types[0].decode(errors="replace"))
        request.write(json_response(request, lease.public()))

    async def _register(self, request: Request) -> None:
        if request.method != b"POST":
            request.write(json_error(request, 405, "use POST /buildlet/register"))
            return
        form: dict[bytes, list[bytes]] = request.args or {}
        values = {k: form.get(k.encode(), []) for k in ("type", "url", "secret")}
        missing = [k for k, v in values.items() if len(v) != 1 or not v[0]]
        if missing:
            request.write(
                json_error(request, 400, f"give exactly one of each form field: {missing}")
            )
            return
        type_name, url, secret = (values[k][0].decode(errors="replace") for k in values)
        lease = await self._coordinator.register(type_name, url, secret)
        request.write(json_response(request, lease.public()))

    async def _list(self, request: Request, user: str) -> None:
        leases = await self._coordinator.owned(user)
        request.write(json_response(request, [lease.public() for lease in leases]))

    async def _proxy(self, request: Request, user: str, target: str, path: str) -> None:
        try:
            lease = await self._coordinator.use(user, target)
        except NotYours:
            # the same answer as for a buildlet that does not exist, so names cannot be probed
            raise NoSuchBuildlet(no_such_buildlet(target)) from None
        if path == "/halt" and request.method == b"POST":
            await self._coordinator.destroy(lease.name)
            request.write(json_response(request, {"halted": lease.name}))
            return
        query = request.uri.partition(b"?")[2]
        full_path = path.encode() + (b"?" + query if query else b"")
        try:
            await forward(request, self._reactor, lease.url, lease.secret, full_path)
        except Exception:
            proxy_failed(request, failure.Failure(), lease.name)

    def _failed(self, reason: failure.Failure, request: Request) -> None:
        if request.startedWriting:
            return
        error = reason.value
        if isinstance(error, CoordinatorError):
            if isinstance(error, PoolFull):
                request.setHeader(b"retry-after", str(error.retry_after).encode())
            request.write(json_error(request, error.status, str(error)))
            return
        log.err(reason, "coordinator request failed")
        request.write(
            json_error(request, 500, f"the coordinator failed: {error}; its log has the details")
        )


def _finish(request: Request) -> None:
    if not request.finished and not getattr(request, "_disconnected", False):
        request.finish()
