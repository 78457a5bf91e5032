"""The HTTP kit every farm API is built on: routes, the one error shape, the async bridge."""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace
from typing import Any

import pytest
import treq
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.python import failure, log
from twisted.web import resource, server
from twisted.web.resource import IResource
from twisted.web.test.requesthelper import DummyChannel

from buildbot_farm.db import DatabaseError
from buildbot_farm.leases import keys
from buildbot_farm.leases.api import CoordinatorResource
from buildbot_farm.ondemand.api import OnDemandAPI
from buildbot_farm.web import ApiError, Routes, respond
from buildbot_farm.web.status import StatusAPI
from tests.harness.stub_http import stub_request


class _Pets:
    """A small API: a list, an item with a parameter, a handler for each failure."""

    routes: Routes[_Pets] = Routes("pets")

    def __init__(self) -> None:
        self.pending: defer.Deferred[Any] = defer.Deferred()

    @routes.route("GET", "pets")
    async def pets(self, request: server.Request) -> list[str]:
        return ["rex"]

    @routes.route("POST", "pets")
    async def add(self, request: server.Request) -> bytes:
        raise ApiError(400, "bad pet; fix each field", {"name": "required"},
                       headers={b"x-why": b"test"}, key="k")

    @routes.route("GET", "pets/{name}")
    async def pet(self, request: server.Request, name: str) -> dict[str, str]:
        if name == "db":
            raise DatabaseError("connection refused")
        if name == "bug":
            raise KeyError("oops")
        return {"name": name}

    @routes.route("DELETE", "pets/{name}")
    async def remove(self, request: server.Request, name: str) -> Any:
        return await self.pending


def _answer(method: str, url: str, api: _Pets | None = None) -> tuple[int, Any, Any]:
    """One request through StubTreq (no socket) to the API mounted as ``pets``.

    (status, headers, parsed JSON body)
    """
    api = api or _Pets()
    root = resource.Resource()
    root.putChild(b"pets", IResource(api.routes.resource(api, under="pets")))
    return _stub_answer(root, method, url)


def _stub_answer(root: resource.Resource, method: str, url: str,
                 headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    """One request through StubTreq to ``root``: (status, headers, parsed JSON body)."""
    stub = StubTreq(root)
    done: list[Any] = []
    stub_request(stub, method, url, headers=headers or {}).addCallback(
        lambda response: treq.content(response).addCallback(
            lambda body: done.append((response.code, response.headers, body))))
    stub.flush()
    code, answer_headers, body = done[0]
    return code, answer_headers, json.loads(body) if body else None


def test_routes_match_methods_and_parameters() -> None:
    """A route's parameters reach its handler; a trailing slash is the same path."""
    assert _answer("GET", "http://farm/pets")[::2] == (200, ["rex"])
    assert _answer("GET", "http://farm/pets/")[::2] == (200, ["rex"])
    assert _answer("GET", "http://farm/pets/m%C3%BC")[::2] == (200, {"name": "mü"})


def test_unknown_paths_and_methods_answer_404_and_405_in_the_error_shape() -> None:
    """No route: 404 naming what is served; a known path: 405 with ``Allow``."""
    code, _, body = _answer("GET", "http://farm/pets/a/b")
    assert code == 404
    assert "GET /pets/{name}" in body["error"]
    code, headers, body = _answer("PUT", "http://farm/pets/a")
    assert code == 405
    assert headers.getRawHeaders("allow") == ["DELETE, GET"]
    assert body == {"error": "PUT is not allowed here; use DELETE, GET"}


def test_an_api_error_is_answered_in_the_one_shape_with_its_headers() -> None:
    """``ApiError`` becomes ``{"error", "fields", ...details}`` with its status and headers."""
    code, headers, body = _answer("POST", "http://farm/pets")
    assert code == 400
    assert body == {"error": "bad pet; fix each field", "fields": {"name": "required"},
                    "key": "k"}
    assert headers.getRawHeaders("x-why") == ["test"]


def test_database_failures_are_503_and_bugs_500_with_the_cause_logged() -> None:
    """A database failure is 503 with its reason; any other exception a logged JSON 500."""
    code, _, body = _answer("GET", "http://farm/pets/db")
    assert (code, body) == (503, {"error": "the farm database failed: connection refused;"
                                           " retry shortly"})
    logged: list[dict[str, Any]] = []
    log.addObserver(logged.append)
    try:
        code, _, body = _answer("GET", "http://farm/pets/bug")
    finally:
        log.removeObserver(logged.append)
    assert (code, body) == (500, {"error": "the pets API failed; the master's log has the"
                                           " cause"})
    assert any(event.get("isError") and "oops" in str(event.get("failure")) for event in logged)


def _request() -> tuple[server.Request, Any]:
    channel = DummyChannel()
    request = server.Request(channel)
    request.method, request.uri, request.path = b"DELETE", b"/pets/rex", b"/pets/rex"
    request.postpath = [b"pets", b"rex"]
    request.prepath = []
    return request, channel.transport


def test_an_answer_for_a_client_that_hung_up_is_dropped_without_a_traceback() -> None:
    """The handler finishes after the client left: nothing is written, nothing is logged."""
    api = _Pets()
    request, transport = _request()
    logged: list[dict[str, Any]] = []
    log.addObserver(logged.append)
    try:
        respond(request, lambda: api.routes.dispatch(api, request), "the pets API")
        request.connectionLost(failure.Failure(ConnectionDone()))
        api.pending.callback({"gone": True})
    finally:
        log.removeObserver(logged.append)
    assert transport.written.getvalue() == b""
    assert not request.finished
    assert [event for event in logged if event.get("isError")] == []


def test_route_patterns_are_literal_or_named_segments() -> None:
    """A malformed pattern is refused when the route is declared."""
    routes: Routes[object] = Routes("bad")
    with pytest.raises(ValueError, match="neither literal"):
        routes.route("GET", "a/{b")
    with pytest.raises(ValueError, match="neither literal"):
        routes.route("GET", "a/{1x}")


def test_the_farm_apis_answer_a_wrong_method_with_a_json_405() -> None:
    """Status, on-demand and the coordinator answer a wrong method as JSON with ``Allow``
    (they answered Twisted's HTML page before the kit)."""
    root = resource.Resource()
    root.putChild(b"status", IResource(StatusAPI(lambda: None, "1").resource()))
    on_demand = OnDemandAPI(SimpleNamespace(jobs=None))  # type: ignore[arg-type]
    root.putChild(b"build", IResource(on_demand.resource("build")))
    secret = b"kit-test-secret"
    root.putChild(b"coordinator", IResource(CoordinatorResource(object(), secret, None)))  # type: ignore[arg-type]
    token = base64.b64encode(f"user-kit:{keys.user_key(secret, 'user-kit')}".encode()).decode()
    for url, headers, allowed in [
        ("http://farm/status", {}, "GET"),
        ("http://farm/build", {}, "POST"),
        ("http://farm/coordinator/buildlet/create", {"Authorization": f"Basic {token}"},
         "POST"),
    ]:
        code, answer_headers, body = _stub_answer(root, "PUT", url, headers)
        assert (code, answer_headers.getRawHeaders("allow")) == (405, [allowed]), url
        assert body == {"error": f"PUT is not allowed here; use {allowed}"}
    code, _, body = _stub_answer(root, "POST", "http://farm/build", {})
    assert code == 503
    assert "OnDemandBuilds" in body["error"]
