"""``CoordinatorClient``: lease buildlets and drive them through the coordinator's proxy.

Used by ``buildbot-farm lease ...`` and by ``FarmLatentWorker``. Every call is a coroutine;
``http_client`` is a treq ``HTTPClient`` on the caller's reactor
(``buildbot_farm.web.client.http_client``), or ``treq.testing.StubTreq`` in tests.

An exec whose connection drops (a load balancer cutting a long request, a coordinator
restarting) is re-attached by its id (``GET /exec/attach?id=&offset=``) from the byte offset
received so far, so that every byte of output arrives exactly once: see ``exec``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import IO, Any, Callable

from twisted.internet import defer, task
from twisted.web import client

from buildbot_farm.leases.client_streams import BodyStream, ExecOutput, JsonLines, one_line
from buildbot_farm.remote.protocol import (
    EXEC_ID_HEADER,
    EXEC_OFFSET_HEADER,
    FRAMING_HEADER,
    ExitStatus,
)

PROXY_HEADER = "X-Buildlet-Proxy"
# Every answer of a coordinator carries it (leases.api): an answer without it is another server's.
COORDINATOR_HEADER = "X-Buildlet-Coordinator"
REATTACH_FOR = 60.0  # seconds a dropped exec is retried without progress (agents wait 120 s)
FIRST_RETRY_DELAY = 0.05
MAX_RETRY_DELAY = 2.0
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


def _reasons(error: Exception) -> str:
    """What a treq request failure says, without the reprs of nested failures."""
    if isinstance(error, (client.ResponseFailed, client.ResponseNeverReceived)):
        return "; ".join(reason.getErrorMessage().rstrip(".") for reason in error.reasons)
    return str(error).rstrip(".")


def _transient(error: CoordinatorRequestError) -> bool:
    """Whether a failed re-attach is worth trying again: the coordinator was unreachable, busy,
    or something in front of it (a load balancer's error page) answered instead."""
    if isinstance(error, NotACoordinator):
        return error.status >= 500
    return error.status in (0, 503, 504)


class CoordinatorClient:
    """One user's view of a coordinator at ``url`` (HTTP Basic as ``user`` with ``key``).

    With a ``clock`` (the reactor), an exec whose connection drops is re-attached for up to
    ``reattach_for`` seconds without progress; without one it fails as the connection does.
    """

    def __init__(
        self, url: str, user: str, key: str, http_client: Any, clock: Any = None,
        reattach_for: float = REATTACH_FOR,
    ) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self._auth = (user, key)
        self._http = http_client
        self._clock = clock
        self._reattach_for = reattach_for

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
        except defer.CancelledError:
            raise
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
                message = one_line(body)
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
                f" something that is not JSON: {one_line(body)!r}"
            ) from None

    async def create(
        self,
        buildlet_type: str,
        wait: float = 0,
        on_place: Callable[[int], object] = lambda ahead: None,
    ) -> dict[str, Any]:
        """Lease a new buildlet of ``buildlet_type``; return its Name/Type/Created/Expires.

        With ``wait`` > 0, a full pool puts this create in line for up to ``wait`` seconds
        (the coordinator may cap it); ``on_place(ahead)`` hears how many creates are ahead
        each time the coordinator says so. Leaving (cancelling) leaves the line.
        """
        if wait <= 0:
            return dict(await self._json("POST", "/buildlet/create", data={"type": buildlet_type}))
        response = await self._request(
            "POST", "/buildlet/create", data={"type": buildlet_type, "wait": f"{wait:g}"}
        )
        stream = JsonLines()
        response.deliverBody(stream)
        try:
            while True:
                try:
                    message = await stream.next()
                except ValueError as e:
                    raise CoordinatorRequestError(
                        response.code, f"the coordinator at {self.url} answered a waiting create"
                        f" with something that is not a JSON line: {e}"
                    ) from None
                if message is None:
                    raise CoordinatorRequestError(
                        response.code, f"the coordinator at {self.url} ended a waiting create"
                        " without a buildlet or an error; try again"
                    )
                if "error" in message:
                    raise CoordinatorRequestError(
                        int(message.get("code", 0)), str(message["error"])
                    )
                if "buildlet" in message:
                    return dict(message["buildlet"])
                if "status" in message:
                    on_place(int(message["status"]["ahead"]))
        finally:
            stream.hang_up()

    async def buildlets(self) -> list[dict[str, Any]]:
        """This user's buildlets."""
        return list(await self._json("GET", "/buildlet/list"))

    async def lost_buildlets(self) -> list[dict[str, Any]]:
        """This user's buildlets lost with their hosts: Name, Type, Lost (when), Reason."""
        return list(await self._json("GET", "/buildlet/lost"))

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
        on_notice: Callable[[str], object] = lambda text: None,
    ) -> ExitStatus:
        """Run ``command args...`` on the buildlet; stream its output to ``on_output``.

        With ``system`` the command is looked up on the buildlet's PATH (gomote's mode=sys).
        A dropped connection is re-attached (see the class); ``on_notice`` hears of each
        re-attach, and of output the buildlet no longer had (past its spool). Cancelling the
        call kills the command (``POST /exec/kill``) rather than leaving it to the grace period.
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
        exec_id = response.headers.getRawHeaders(EXEC_ID_HEADER, [None])[0]
        output = ExecOutput(on_output)
        try:
            error = await self._follow(response, output)
            deadline = self._deadline()
            while output.decoder.status is None and exec_id and self._clock is not None:
                offset = output.offset
                why = "it ended before the exit status" if error is None else _reasons(error)
                on_notice(f"the connection to {name} dropped ({why}); re-attaching to the "
                          f"command at byte {offset}")
                try:
                    response = await self._attach(name, exec_id, offset, deadline)
                except CoordinatorRequestError as e:
                    on_notice(f"re-attaching to the command on {name} failed: {e}")
                    break
                start = int(response.headers.getRawHeaders(EXEC_OFFSET_HEADER, [offset])[0])
                if start > offset:
                    on_notice(f"{start - offset} bytes of the command's output were lost: "
                              f"{name} keeps only its latest output for a re-attach")
                output.restart(start)
                error = await self._follow(response, output)
                if output.offset > start:
                    deadline = self._deadline()
        except defer.CancelledError:
            if exec_id:
                with contextlib.suppress(CoordinatorRequestError):
                    await self.kill_exec(name, exec_id)
            raise
        if output.decoder.status is None and error is not None:
            raise error
        return output.decoder.finish()

    def _deadline(self) -> float:
        return 0.0 if self._clock is None else self._clock.seconds() + self._reattach_for

    async def _follow(self, response: Any, output: ExecOutput) -> Exception | None:
        """Feed response's body to output; the error that cut it short, if one did."""
        stream = BodyStream(output.feed)
        response.deliverBody(stream)
        try:
            await stream.done
        except (client.ResponseFailed, client.ResponseNeverReceived) as e:
            return e
        return None

    async def _attach(self, name: str, exec_id: str, offset: int, deadline: float) -> Any:
        """``GET /exec/attach`` from offset, retrying transient failures until deadline."""
        delay = FIRST_RETRY_DELAY
        while True:
            try:
                return await self._request(
                    "GET", "/exec/attach", buildlet=name, headers={FRAMING_HEADER: "1"},
                    params={"id": exec_id, "offset": str(offset)},
                )
            except CoordinatorRequestError as e:
                if not _transient(e) or self._clock.seconds() + delay > deadline:
                    raise
            await task.deferLater(self._clock, delay, lambda: None)
            delay = min(delay * 2, MAX_RETRY_DELAY)

    async def kill_exec(self, name: str, exec_id: str) -> bool:
        """Kill the exec ``exec_id`` on the buildlet; False if it had already ended."""
        answer = await self._json(
            "POST", "/exec/kill", buildlet=name, params={"id": exec_id}
        )
        return bool(answer.get("killed"))

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
        stream = BodyStream(sink)
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
