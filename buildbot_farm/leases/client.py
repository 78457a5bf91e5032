"""``CoordinatorClient``: lease buildlets and drive them through the coordinator's proxy.

Used by ``buildbot-farm lease ...`` and by ``FarmLatentWorker``. Every call is a coroutine;
``http_client`` is a treq ``HTTPClient`` on the caller's reactor
(``buildbot_farm.web.client.http_client``), or ``treq.testing.StubTreq`` in tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import IO, Any, Callable

from twisted.internet import defer, protocol
from twisted.python import failure
from twisted.web import client, http

from buildbot_farm.leases.frames import ExitStatus, FrameDecoder

PROXY_HEADER = "X-Buildlet-Proxy"
FRAMING_HEADER = "X-Buildlet-Framing"
# Every answer of a coordinator carries it (leases.api): an answer without it is another server's.
COORDINATOR_HEADER = "X-Buildlet-Coordinator"
URL_HINT = "is this the coordinator's URL? it usually ends in /plugins/farm/coordinator"


class CoordinatorRequestError(Exception):
    """The coordinator or the buildlet refused a request; the message is theirs.

    ``status`` is the HTTP status, or 0 when the coordinator could not be reached.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})" if status else message)
        self.status = status


class NotACoordinator(CoordinatorRequestError):
    """What answered at the coordinator's URL is not a coordinator (a wrong URL, most often).

    The message says what was asked, what answered and what to check, in one line.
    """

    def __init__(self, status: int, message: str) -> None:
        Exception.__init__(self, message)
        self.status = status


def _one_line(body: bytes, limit: int = 200) -> str:
    text = " ".join(body.decode(errors="replace").split())
    return text if len(text) <= limit else text[:limit] + "..."


def _reasons(error: Exception) -> str:
    """What a treq request failure says, without the reprs of nested failures."""
    if isinstance(error, (client.ResponseFailed, client.ResponseNeverReceived)):
        return "; ".join(reason.getErrorMessage().rstrip(".") for reason in error.reasons)
    return str(error).rstrip(".")


class _Stream(protocol.Protocol):
    def __init__(self, on_data: Callable[[bytes], object]) -> None:
        self._on_data = on_data
        self.done: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self._on_data(data)

    def connectionLost(self, reason: failure.Failure = protocol.connectionDone) -> None:
        if reason.check(client.ResponseDone, http.PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


class CoordinatorClient:
    """One user's view of a coordinator at ``url`` (HTTP Basic as ``user`` with ``key``)."""

    def __init__(self, url: str, user: str, key: str, http_client: Any) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self._auth = (user, key)
        self._http = http_client

    async def _request(
        self,
        method: str,
        path: str,
        buildlet: str | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        all_headers = dict(headers or {})
        if buildlet:
            all_headers[PROXY_HEADER] = buildlet
        try:
            response = await self._http.request(
                method, self.url + path, auth=self._auth, headers=all_headers,
                unbuffered=True, **kwargs,
            )
        except Exception as e:
            raise CoordinatorRequestError(
                0, f"cannot reach the coordinator at {self.url} ({method} {path}): {_reasons(e)};"
                " check the URL's host and port, and that the coordinator runs there"
            ) from e
        if not response.headers.hasHeader(COORDINATOR_HEADER):
            await response.content()  # read and drop another server's page
            raise NotACoordinator(
                response.code,
                f"{self.url} answered {response.code} to {method} {path}"
                f"{'' if response.code >= 400 else ' but is no coordinator'}: {URL_HINT}",
            )
        if response.code >= 400:
            body = await response.content()
            try:
                message = json.loads(body)["error"]
            except (ValueError, KeyError, TypeError):
                message = _one_line(body)
            raise CoordinatorRequestError(response.code, message)
        return response

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = await self._request(method, path, **kwargs)
        body = await response.content()
        try:
            return json.loads(body)
        except ValueError:
            raise CoordinatorRequestError(
                response.code, f"the coordinator at {self.url} answered {method} {path} with"
                f" something that is not JSON: {_one_line(body)!r}"
            ) from None

    async def create(self, buildlet_type: str) -> dict[str, Any]:
        """Lease a new buildlet of ``buildlet_type``; return its Name/Type/Created/Expires."""
        return dict(await self._json("POST", "/buildlet/create", data={"type": buildlet_type}))

    async def buildlets(self) -> list[dict[str, Any]]:
        """This user's buildlets."""
        return list(await self._json("GET", "/buildlet/list"))

    async def status(self, name: str) -> dict[str, Any]:
        """The buildlet's agent status (this also renews the lease)."""
        return dict(await self._json("GET", "/status", buildlet=name))

    async def destroy(self, name: str) -> None:
        """Release the buildlet: ``POST /halt`` through the proxy."""
        await self._json("POST", "/halt", buildlet=name)

    async def exec(
        self,
        name: str,
        command: str,
        args: Iterable[str] = (),
        directory: str | None = None,
        env: Mapping[str, str] | None = None,
        system: bool = True,
        on_output: Callable[[bytes], object] = lambda data: None,
    ) -> ExitStatus:
        """Run ``command args...`` on the buildlet; stream its output to ``on_output``.

        With ``system`` the command is looked up on the buildlet's PATH (gomote's mode=sys).
        """
        form: list[tuple[str, str]] = [("cmd", command)]
        form += [("cmdArg", arg) for arg in args]
        if directory:
            form.append(("dir", directory))
        form += [("env", f"{k}={v}") for k, v in (env or {}).items()]
        if system:
            form.append(("mode", "sys"))
        response = await self._request(
            "POST", "/exec", buildlet=name, headers={FRAMING_HEADER: "1"}, data=form
        )
        decoder = FrameDecoder()

        def received(data: bytes) -> None:
            for chunk in decoder.feed(data):
                on_output(chunk)

        stream = _Stream(received)
        response.deliverBody(stream)
        await stream.done
        return decoder.finish()

    async def put_tgz(self, name: str, archive: IO[bytes], directory: str = "") -> None:
        """Unpack a tar.gz (a file object, streamed) into ``directory`` of the work dir."""
        await self._json(
            "PUT", "/writetgz", buildlet=name, params={"dir": directory}, data=archive
        )

    async def put_file(self, name: str, source: IO[bytes], path: str, mode: int = 0o644) -> None:
        """Write a file object's contents to ``path`` in the work dir, with permissions ``mode``.

        The agent takes the mode in decimal, as Go's buildlet client sends it.
        """
        await self._json(
            "PUT", "/write", buildlet=name, params={"path": path, "mode": str(mode)}, data=source
        )

    async def get_stream(
        self, name: str, path: str, params: Mapping[str, str], sink: Callable[[bytes], object]
    ) -> None:
        """GET ``path`` (``/tgz`` or ``/read``) through the proxy, streaming it to ``sink``."""
        await self.get_stream_sized(name, path, params, sink, lambda length: None)

    async def get_stream_sized(
        self,
        name: str,
        path: str,
        params: Mapping[str, str],
        sink: Callable[[bytes], object],
        on_length: Callable[[int | None], object],
    ) -> None:
        """Like ``get_stream``, first telling ``on_length`` the body's size (None if unknown)."""
        response = await self._request("GET", path, buildlet=name, params=dict(params))
        on_length(response.length if isinstance(response.length, int) else None)
        stream = _Stream(sink)
        response.deliverBody(stream)
        await stream.done

    async def ls(self, name: str, directory: str = "", digest: bool = False) -> list[Any]:
        """The work dir's entries under ``directory`` (recursive), optionally with sha256.

        Asks for the agent's JSON listing (its default is Go's line format).
        """
        params = {"dir": directory, "recursive": "1"}
        if digest:
            params["digest"] = "1"
        return list(await self._json(
            "GET", "/ls", buildlet=name, params=params, headers={"Accept": "application/json"}
        ))

    async def remove(self, name: str, paths: Iterable[str]) -> None:
        """Remove files or trees in the work dir."""
        await self._json(
            "POST", "/removeall", buildlet=name, data=[("path", p) for p in paths]
        )
