"""The farm's HTTP kit: routes declared on an API class, and one bridge from async to Twisted.

An API is a class whose handlers are declared on a class attribute, as klein declares them::

    class RecordsAPI:
        routes = Routes("records")

        @routes.route("GET", "{name}/{version}")
        async def record(self, request: Request, name: str, version: str) -> bytes: ...

    RecordsAPI(...).routes.resource(api)   # a leaf Resource to mount

Patterns are relative to where the resource is mounted: segments separated by ``/``, each a
literal or a ``{parameter}`` matching one non-empty segment (URL-decoded, UTF-8). A handler
returns the body (headers and status already set, e.g. by :func:`json_response`), a JSON
value (answered 200), or None when it has finished the request itself (a stream). It raises
:class:`ApiError` for anything else. A path no route matches answers 404 listing the routes;
a path matched for other methods answers 405 with ``Allow``. ``HEAD`` is ``GET`` without body.

Why not klein (STYLE.md names it): served the same way, a klein app answered about half the
requests per second of a plain ``twisted.web`` resource on this machine, and this router
nearly as many as the plain resource (``benchmarks/bench_web_kit.py``; figures in
``docs/web-kit.md``). The shape is klein's: routes on a class attribute.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.python import log
from twisted.web import resource, server
from twisted.web.server import Request

from buildbot_farm.compat.twisted_web import disconnected
from buildbot_farm.db import DatabaseError, UnstorableValue
from buildbot_farm.web._json import ApiError, json_error, json_response
from buildbot_farm.web._request import NUL

Answer = Any
Owner = TypeVar("Owner")
Handler = Callable[..., Awaitable[Answer]]


def _deliver(request: Request, body: bytes | None) -> None:
    """Write ``body`` and finish ``request``, unless it is finished or its client hung up.

    ``None`` means that whoever answered finished the request (or streams it) already.
    """
    if body is None or request.finished or disconnected(request):
        return
    request.write(body)
    request.finish()


async def _run(request: Request, work: Callable[[], Awaitable[Answer]], what: str) -> None:
    try:
        answer = await work()
        body = answer if answer is None or isinstance(answer, bytes) else (
            json_response(request, answer))
    except ApiError as e:
        body = e.answer(request)
    except UnstorableValue as e:
        body = json_error(request, 400, f"{e}; send the value without it")
    except DatabaseError as e:
        body = json_error(request, 503, f"the farm database failed: {e}; retry shortly")
    except Exception:
        log.err(None, f"{what} failed")
        body = json_error(request, 500, f"{what} failed; the master's log has the cause")
    if request.startedWriting and body is not None:
        # An error after a stream began cannot be answered: cut the connection, so that the
        # client sees a truncated answer rather than a complete-looking one.
        if not request.finished and not disconnected(request):
            request.loseConnection()
        return
    _deliver(request, body)


def respond(request: Request, work: Callable[[], Awaitable[Answer]], what: str) -> int:
    """Answer ``request`` with what ``work`` returns; for a ``render`` method to return.

    :class:`ApiError` is answered in the farm's error shape, a value the database cannot
    store as 400, a database failure as 503, and anything else as a 500 whose cause goes to
    the log under ``what`` (e.g. "the records API"). Nothing is written to a client that hung
    up meanwhile, and no traceback is logged for it.
    """
    defer.ensureDeferred(_run(request, work, what))
    return server.NOT_DONE_YET


@dataclass(frozen=True)
class Route:
    """One method and pattern, and the function (taking the owner first) that answers it."""

    method: str
    pattern: tuple[str, ...]
    handler: Handler

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The parameters of ``segments`` if they fit the pattern, else None."""
        if len(segments) != len(self.pattern):
            return None
        found: dict[str, str] = {}
        for part, segment in zip(self.pattern, segments):
            if part.startswith("{"):
                if not segment:
                    return None
                found[part[1:-1]] = segment
            elif part != segment:
                return None
        return found

    def spelled(self) -> str:
        """``METHOD /pattern``, for messages."""
        return f"{self.method} /{'/'.join(self.pattern)}"


def _pattern(text: str) -> tuple[str, ...]:
    parts = tuple(text.strip("/").split("/")) if text.strip("/") else ()
    for part in parts:
        inner = part[1:-1]
        if part.startswith("{") != part.endswith("}") or (part.startswith("{") and (
                not inner.isidentifier())):
            raise ValueError(f"route pattern {text!r}: {part!r} is neither literal nor {{name}}")
    return parts


def segments_of(request: Request) -> list[str]:
    """The path below the resource as text segments, without one trailing empty segment."""
    segments = [s.decode("utf-8", errors="replace") for s in request.postpath or []]
    if segments and segments[-1] == "":
        segments.pop()
    return segments


class Routes(Generic[Owner]):
    """The routes of one API class, declared with :meth:`route` on its methods.

    ``name`` names the API in messages ("no records API at ..."); ``hint`` ends the message
    of a 404 (what else the API answers).
    """

    def __init__(self, name: str, hint: str = "") -> None:
        self.name = name
        self.hint = hint
        self.table: list[Route] = []

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        """Declare the decorated method as the answer to ``method`` on ``pattern``."""

        parts = _pattern(pattern)

        def declare(handler: Handler) -> Handler:
            self.table.append(Route(method.upper(), parts, handler))
            return handler

        return declare

    async def dispatch(
        self, owner: Owner, request: Request, under: str = "", **extra: Any
    ) -> Answer:
        """Answer ``request`` with ``owner``'s handler for it; 404/405 when there is none.

        ``under`` is the path (from the API's base) of the resource that got the request;
        ``extra`` are further arguments of every handler (e.g. the authenticated user).
        """
        segments = [*_pattern(under), *segments_of(request)]
        if any(NUL in segment for segment in segments):
            raise ApiError(400, "the path holds a NUL character (%00), which no name in the "
                           "farm can hold")
        method = request.method.decode("ascii", errors="replace")
        wanted = "GET" if method == "HEAD" else method
        allowed: list[str] = []
        for route in self.table:
            found = route.match(segments)
            if found is None:
                continue
            if route.method == wanted:
                return await route.handler(owner, request, **found, **extra)
            allowed.append(route.method)
        if not allowed:
            served = ", ".join(route.spelled() for route in self.table)
            hint = f", {self.hint}" if self.hint else ""
            raise ApiError(404, f"no {self.name} API at /{'/'.join(segments)}; it serves "
                           f"{served}{hint}")
        listed = ", ".join(sorted(set(allowed)))
        raise ApiError(405, f"{method} is not allowed here; use {listed}",
                       headers={b"allow": listed.encode()})

    def resource(self, owner: Owner, under: str = "") -> resource.Resource:
        """A leaf resource answering every request below it through ``owner``'s routes.

        Mounted at ``BASE/under``, it answers the routes whose patterns start with ``under``:
        the patterns are then the paths of the API's OpenAPI document (relative to BASE).
        """
        return RoutedResource(self, owner, under)


class RoutedResource(resource.Resource, Generic[Owner]):
    """The ``twisted.web`` face of an API: every request below it goes to its routes."""

    isLeaf = True

    def __init__(self, routes: Routes[Owner], owner: Owner, under: str = "") -> None:
        super().__init__()
        self.routes = routes
        self.owner = owner
        self.under = under

    def render(self, request: Request) -> int:
        """Dispatch ``request``; the answer is written when its handler has one."""
        return respond(request, lambda: self.routes.dispatch(self.owner, request, self.under),
                       f"the {self.routes.name} API")
