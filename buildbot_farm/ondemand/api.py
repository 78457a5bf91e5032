"""The HTTP API of on-demand builds: ``build``, ``download`` and ``compat`` under ``/api/``.

Its OpenAPI document is :data:`buildbot_farm.ondemand.openapi.OPENAPI`; the routes below
are its paths.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.web import http, resource
from twisted.web.server import Request

from buildbot_farm.artifacts import download, paths
from buildbot_farm.artifacts.steps import NoRepository, find_repository
from buildbot_farm.artifacts.storage import StorageError
from buildbot_farm.ondemand import model
from buildbot_farm.ondemand.config import OFF
from buildbot_farm.ondemand.host import OnDemandHost, UnknownScheduler
from buildbot_farm.ondemand.store import Job, job_summary
from buildbot_farm.web import ApiError, Routes, json_response
from buildbot_farm.web._request import json_object_body, query_args

SCHEDULER_ARG = "scheduler"
PUBLIC_KEY = "public-key.pem"
SIGNATURE = ".sig"


class OnDemandAPI:
    """``POST /build`` submits a request, ``GET /build/{key}`` describes its job,
    ``GET /download/{key}`` sends its artifact (``{key}.sig`` its detached Ed25519 signature,
    ``public-key.pem`` the key that verifies it) and ``GET /compat?name=value...`` submits,
    waits for the artifact and sends it.

    Mount :meth:`resource` of each of ``build``, ``download`` and ``compat`` at that name.
    """

    routes: Routes[OnDemandAPI] = Routes("on-demand")

    def __init__(self, host: OnDemandHost) -> None:
        self.host = host

    def resource(self, mount: str) -> resource.Resource:
        """The resource to mount as ``mount`` (``build``, ``download`` or ``compat``)."""
        return self.routes.resource(self, under=mount)

    def url(self, request: Request, kind: str, key: str) -> str:
        """The absolute URL of ``/api/{kind}/{key}`` as this request's client sees it."""
        here = request.prePathURL().decode()
        return here[: here.rindex("/api/") + len("/api/")] + f"{kind}/{key}"

    async def submit(self, raw: dict[str, Any]) -> Job:
        """Submit ``raw``; the job, or :class:`ApiError` 400/404/503."""
        if self.host.jobs is None:
            raise ApiError(503, OFF)
        name = raw.pop(SCHEDULER_ARG, None)
        try:
            scheduler = self.host.scheduler(name if isinstance(name, str) else None)
            submission = await scheduler.submit(raw)
        except UnknownScheduler as e:
            raise ApiError(404, str(e)) from e
        except model.BadParameters as e:
            raise ApiError(400, "bad parameters; fix each one named in 'fields'",
                           e.problems) from e
        return submission.job

    async def _job(self, key: str) -> Job:
        jobs = self.host.jobs
        job = None if jobs is None or not model.is_build_key(key) else await jobs.get(key)
        if job is None:
            raise ApiError(404, f"no on-demand job has key {key!r}")
        return job

    @routes.route("POST", "build")
    async def build(self, request: Request) -> bytes:
        """Take a JSON object of parameter values (``scheduler`` picks the scheduler)."""
        job = await self.submit(json_object_body(request, empty={}))
        body: dict[str, Any] = {"key": job.key, "status": job.status}
        if job.status == "succeeded":
            body["download"] = self.url(request, "download", job.key)
            body["url"] = job.artifact.url if job.artifact else None
            return json_response(request, body, 200)
        return json_response(request, body, 202)

    @routes.route("GET", "build/{key}")
    async def job(self, request: Request, key: str) -> dict[str, Any]:
        """The job of ``key``: its status, attempts and download URL."""
        job = await self._job(key)
        jobs = self.host.jobs
        assert jobs is not None, "a job was found, so the table exists"
        attempts = await jobs.attempts(job.key)
        return job_summary(job, attempts, self.url(request, "download", job.key))

    @routes.route("GET", "download/{name}")
    async def download(self, request: Request, name: str) -> bytes | None:
        """The artifact of a finished job, its signature, or the public key."""
        if name == PUBLIC_KEY:
            return self._public_key(request)
        signature = name.endswith(SIGNATURE)
        job = await self._job(name[: -len(SIGNATURE)] if signature else name)
        if job.status != "succeeded" or job.artifact is None:
            raise ApiError(404, f"the job is {job.status}; nothing to download yet",
                           key=job.key, status=job.status)
        if not signature:
            return await _stream(request, self.host.master, job)
        if job.artifact.signature is None:
            raise ApiError(404, "this artifact was stored unsigned", key=job.key)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-disposition",
                          f'attachment; filename="{job.key}.sig"'.encode())
        return base64.b64decode(job.artifact.signature)

    def _public_key(self, request: Request) -> bytes:
        signer = self.host.signer
        if signer is None:
            raise ApiError(404, "this master does not sign artifacts"
                           " (OnDemandBuilds(signing_key=None))")
        request.setHeader(b"content-type", b"application/x-pem-file")
        return signer.public_pem

    @routes.route("GET", "compat")
    async def compat(self, request: Request) -> bytes | None:
        """Submit, then hold the request until the artifact exists (woken by NOTIFY).

        Answers 504 with the key when the build is not done within ``compat_timeout``, and
        the job's error when it failed for good.
        """
        gone = request.notifyFinish()
        raw: dict[str, Any] = {}
        for name, texts in query_args(request).items():
            raw[name] = texts[0] if len(texts) == 1 else texts
        job = await self.submit(raw)
        host = self.host
        finished = await host.wait_for(
            job.key, host.settings.compat_timeout,
            lambda j: j.status in ("succeeded", "failed"), gone,
        )
        if gone.called:
            return None
        if finished is None:
            raise ApiError(504, "the build is not done yet; come back with the key",
                           key=job.key, status_url=self.url(request, "build", job.key))
        if finished.status == "failed":
            raise ApiError(502, f"the build failed: {finished.error}", key=job.key)
        return await _stream(request, host.master, finished)


async def _stream(request: Request, master: Any, job: Job) -> bytes | None:
    """Send the artifact of ``job`` as the response body, from whichever storage keeps it
    (Content-Length, Range, and the sha256 as ETag); None once streaming started."""
    assert job.artifact is not None, "only finished jobs are streamed"
    try:
        repository = find_repository(master)
    except NoRepository as e:
        raise ApiError(503, str(e)) from e
    segments = paths.split(job.artifact.path)
    try:
        entry = await repository.stat(segments)
    except StorageError as e:
        raise ApiError(e.status, str(e), key=job.key) from e
    if entry is None or entry.is_dir:
        raise ApiError(410, f"the artifact of {job.key} was removed (retention);"
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
        raise ApiError(e.status, str(e), key=job.key) from e
