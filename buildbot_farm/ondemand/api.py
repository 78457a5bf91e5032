"""The HTTP API of on-demand builds: ``build``, ``download`` and ``compat`` under ``/api/``."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.python import log
from twisted.web import http, resource, server
from twisted.web.server import Request

from buildbot_farm.artifacts import download, paths
from buildbot_farm.artifacts.steps import NoRepository, find_repository
from buildbot_farm.artifacts.storage import StorageError
from buildbot_farm.ondemand import params
from buildbot_farm.ondemand.config import OFF
from buildbot_farm.ondemand.host import OnDemandHost, UnknownScheduler
from buildbot_farm.ondemand.jobs import Job, job_summary
from buildbot_farm.web._json import json_error, json_response
from buildbot_farm.web._request import BadRequest, json_object_body, query_args

SCHEDULER_ARG = "scheduler"
PUBLIC_KEY = "public-key.pem"


def _respond(request: Request, work: Callable[[], Awaitable[bytes | None]]) -> int:
    """Run ``work`` for ``request``; it returns the body, or None when it finished the request.

    Nothing is written to a client that hung up meanwhile.
    """
    lost: list[bool] = []
    request.notifyFinish().addErrback(lambda _: lost.append(True))

    async def run() -> None:
        try:
            body = await work()
        except BadRequest as e:
            body = e.answer(request)
        except Exception:
            log.err(None, "farm on-demand: request failed")
            body = json_error(request, 500, "internal error; the master's log has the details")
        if body is not None and not lost and not request.finished:
            request.write(body)
            request.finish()

    defer.ensureDeferred(run())
    return server.NOT_DONE_YET


class _Api:
    """What the three resources share: the host and the answers they give."""

    def __init__(self, host: OnDemandHost) -> None:
        self.host = host

    def url(self, request: Request, kind: str, key: str) -> str:
        """The absolute URL of ``/api/{kind}/{key}`` as this request's client sees it."""
        here = request.prePathURL().decode()
        return here[: here.rindex("/api/") + len("/api/")] + f"{kind}/{key}"

    async def submit(self, request: Request, raw: dict[str, Any]) -> tuple[Job | None, bytes]:
        """Submit ``raw``; the job, or None and the 400/404/503 answer."""
        if self.host.jobs is None:
            return None, json_error(request, 503, OFF)
        name = raw.pop(SCHEDULER_ARG, None)
        try:
            scheduler = self.host.scheduler(name if isinstance(name, str) else None)
            submission = await scheduler.submit(raw)
        except UnknownScheduler as e:
            return None, json_error(request, 404, str(e))
        except params.BadParameters as e:
            return None, BadRequest(
                400, "bad parameters; fix each one named in 'fields'", e.problems
            ).answer(request)
        return submission.job, b""


class BuildResource(resource.Resource):
    """``POST /api/build`` submits a request; ``GET /api/build/{key}`` describes its job."""

    def __init__(self, host: OnDemandHost) -> None:
        super().__init__()
        self._api = _Api(host)

    def getChild(self, path: bytes, request: Request) -> resource.Resource:
        """``/api/build/{key}``."""
        return _JobStatus(self._api, path.decode(errors="replace"))

    def render_POST(self, request: Request) -> int:
        """Take a JSON object of parameter values (``scheduler`` picks the scheduler)."""
        return _respond(request, lambda: self._post(request))

    async def _post(self, request: Request) -> bytes:
        raw = json_object_body(request, empty={})
        job, answer = await self._api.submit(request, raw)
        if job is None:
            return answer
        body: dict[str, Any] = {"key": job.key, "status": job.status}
        if job.status == "succeeded":
            body["download"] = self._api.url(request, "download", job.key)
            body["url"] = job.artifact.url if job.artifact else None
            return json_response(request, body, 200)
        return json_response(request, body, 202)


class _JobStatus(resource.Resource):
    isLeaf = True

    def __init__(self, api: _Api, key: str) -> None:
        super().__init__()
        self._api, self._key = api, key

    def render_GET(self, request: Request) -> int:
        return _respond(request, lambda: self._get(request))

    async def _get(self, request: Request) -> bytes:
        jobs = self._api.host.jobs
        job = None if jobs is None or not params.is_build_key(self._key) else (
            await jobs.get(self._key))
        if jobs is None or job is None:
            return json_error(request, 404, f"no on-demand job has key {self._key!r}")
        attempts = await jobs.attempts(job.key)
        return json_response(
            request, job_summary(job, attempts, self._api.url(request, "download", job.key))
        )


async def _stream(request: Request, master: Any, job: Job) -> bytes | None:
    """Send the artifact of ``job`` as the response body, from whichever storage keeps it
    (Content-Length, Range, and the sha256 as ETag); None once streaming started."""
    assert job.artifact is not None, "only finished jobs are streamed"
    try:
        repository = find_repository(master)
    except NoRepository as e:
        return json_error(request, 503, str(e))
    segments = paths.split(job.artifact.path)
    try:
        entry = await repository.stat(segments)
    except StorageError as e:
        return json_error(request, e.status, str(e), key=job.key)
    if entry is None or entry.is_dir:
        return json_error(request, 410, f"the artifact of {job.key} was removed (retention);"
                          " submit the request again to rebuild it", key=job.key)
    sha256 = job.artifact.sha256
    name = segments[-1].replace('"', "")
    request.setHeader(b"content-disposition", f'attachment; filename="{name}"'.encode())
    request.setHeader(b"x-farm-build-key", job.key.encode())
    request.setHeader(b"x-checksum-sha256", sha256.encode())
    if request.setETag(f'"{sha256}"'.encode()) is http.CACHED:
        return b""
    try:
        return await download.send_stored(request, repository, segments, entry, sha256)
    except StorageError as e:
        return json_error(request, e.status, str(e), key=job.key)


class DownloadResource(resource.Resource):
    """``GET /api/download/{key}``: the artifact of a finished job, as a plain download.

    ``{key}.sig`` is its detached Ed25519 signature (64 bytes, over the raw sha256 digest)
    and ``public-key.pem`` the key that verifies it.
    """

    def __init__(self, host: OnDemandHost) -> None:
        super().__init__()
        self._host = host

    def getChild(self, path: bytes, request: Request) -> resource.Resource:
        """``/api/download/{key}``, ``{key}.sig`` and ``public-key.pem``."""
        name = path.decode(errors="replace")
        if name == PUBLIC_KEY:
            return _PublicKey(self._host)
        if name.endswith(".sig"):
            return _Download(self._host, name[: -len(".sig")], signature=True)
        return _Download(self._host, name, signature=False)


class _PublicKey(resource.Resource):
    isLeaf = True

    def __init__(self, host: OnDemandHost) -> None:
        super().__init__()
        self._host = host

    def render_GET(self, request: Request) -> bytes:
        signer = self._host.signer
        if signer is None:
            return json_error(request, 404, "this master does not sign artifacts"
                              " (OnDemandBuilds(signing_key=None))")
        request.setHeader(b"content-type", b"application/x-pem-file")
        return signer.public_pem


class _Download(resource.Resource):
    isLeaf = True

    def __init__(self, host: OnDemandHost, key: str, signature: bool) -> None:
        super().__init__()
        self._host, self._key, self._signature = host, key, signature

    def render_GET(self, request: Request) -> int:
        return _respond(request, lambda: self._get(request))

    async def _get(self, request: Request) -> bytes | None:
        jobs = self._host.jobs
        job = None if jobs is None or not params.is_build_key(self._key) else (
            await jobs.get(self._key))
        if job is None:
            return json_error(request, 404, f"no on-demand job has key {self._key!r}")
        if job.status != "succeeded" or job.artifact is None:
            return json_error(request, 404, f"the job is {job.status}; nothing to download yet",
                              key=job.key, status=job.status)
        if not self._signature:
            return await _stream(request, self._host.master, job)
        if job.artifact.signature is None:
            return json_error(request, 404, "this artifact was stored unsigned", key=job.key)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-disposition",
                          f'attachment; filename="{job.key}.sig"'.encode())
        return base64.b64decode(job.artifact.signature)


class CompatResource(resource.Resource):
    """``GET /api/compat?name=value...``: submit, wait for the artifact, then send it.

    Answers 504 with the key when the build is not done within ``compat_timeout``, and
    the job's error when it failed for good.
    """

    isLeaf = True

    def __init__(self, host: OnDemandHost) -> None:
        super().__init__()
        self._api = _Api(host)

    def render_GET(self, request: Request) -> int:
        """Hold the request until the artifact exists (no polling: woken by NOTIFY)."""
        return _respond(request, lambda: self._get(request))

    async def _get(self, request: Request) -> bytes | None:
        gone = request.notifyFinish()
        raw: dict[str, Any] = {}
        for name, texts in query_args(request).items():
            raw[name] = texts[0] if len(texts) == 1 else texts
        job, answer = await self._api.submit(request, raw)
        if job is None:
            return answer
        host = self._api.host
        finished = await host.wait_for(
            job.key, host.settings.compat_timeout,
            lambda j: j.status in ("succeeded", "failed"), gone,
        )
        if gone.called:
            return None
        if finished is None:
            return json_error(request, 504, "the build is not done yet; come back with the key",
                              key=job.key, status_url=self._api.url(request, "build", job.key))
        if finished.status == "failed":
            return json_error(request, 502, f"the build failed: {finished.error}", key=job.key)
        return await _stream(request, host.master, finished)
