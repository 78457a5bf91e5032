"""A real artifact repository on loopback (SQLite farm database, local directory storage)."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
import treq
from twisted.internet import utils
from twisted.web import resource, server
from twisted.web.resource import IResource

from buildbot_farm import db
from buildbot_farm.artifacts import ArtifactRepository, ArtifactResource, open_repository
from buildbot_farm.artifacts.repository import Repository
from buildbot_farm.web.client import http_client
from tests.db.conftest import backend, database, db_url_for
from tests.harness.twisted_reactor import reactor

__all__ = ["backend", "database", "db_url_for"]


def plain_http() -> Any:
    """An HTTP client on the test reactor that keeps no connections (no timers left behind)."""
    return http_client(reactor, persistent=False)


def basic(build_id: int, token: str) -> dict[bytes, bytes]:
    """The Authorization header of a build's token used as HTTP Basic."""
    pair = f"build-{build_id}:{token}".encode()
    return {b"authorization": b"Basic " + base64.b64encode(pair)}


@dataclass(frozen=True)
class Answer:
    """A response: status, headers, body and the announced Content-Length."""

    code: int
    headers: Any
    body: bytes
    length: Any

    def header(self, name: str) -> str | None:
        """The last value of header ``name``, or None."""
        values = self.headers.getRawHeaders(name.encode())
        return values[-1].decode("latin-1") if values else None

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass
class RunningRepository:
    """A repository served at ``url`` (``.../artifacts/``) on 127.0.0.1."""

    repository: Repository
    database: db.Database
    url: str
    root: Path
    port: Any

    async def token(self, build_id: int = 7, project: str = "hello", build: int = 3) -> str:
        """Mint a token for build ``build_id`` (builder ``project``, number ``build``)."""
        return await self.repository.mint(build_id, project, build)

    async def request(self, method: str, path: str, **kwargs: Any) -> Answer:
        """Send one request to ``url + path``; return the answer, body read."""
        response = await plain_http().request(method, self.url + path, **kwargs)
        body = await treq.content(response)
        return Answer(response.code, response.headers, body, response.length)


async def run(
    program: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str]:
    """Run a command without blocking the reactor; return its exit code and output.

    A missing program fails the test, saying which Debian package installs it.
    """
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"these tests need {program}: install it with "
                    "tests/harness/install-system-packages.sh", pytrace=False)
    out, err, code = await utils.getProcessOutputAndValue(
        path, args, env={**os.environ, **(env or {})}, path=str(cwd) if cwd else None
    )
    return code, (out + err).decode(errors="replace")


async def curl(*args: str) -> tuple[int, str]:
    """Run curl quietly, printing the HTTP status on the last line; return (status, output)."""
    code, output = await run("curl", "-sS", "--path-as-is", "-w", "\\n%{http_code}", *args)
    assert code == 0, output
    body, _, status = output.rpartition("\n")
    return int(status), body


StartRepository = Callable[..., Awaitable[RunningRepository]]


@pytest_twisted.async_yield_fixture
async def start_repository(tmp_path: Path) -> AsyncIterator[StartRepository]:
    """Start repositories (``ArtifactRepository`` arguments as keywords) on fresh ports.

    ``database_url`` picks the farm database (default: a SQLite file of the test).
    """
    running: list[RunningRepository] = []

    async def start(
        root: Path | None = None, database_url: str | None = None, **settings: Any
    ) -> RunningRepository:
        database = await db.connect(database_url or f"sqlite:///{tmp_path / 'farm.sqlite'}",
                                    reactor)
        site_root = resource.Resource()
        farm = resource.Resource()
        site_root.putChild(b"farm", IResource(farm))
        port = reactor.listenTCP(0, server.Site(site_root), interface="127.0.0.1")
        url = f"http://127.0.0.1:{port.getHost().port}/farm/artifacts/"
        storage = root or tmp_path / "artifacts"
        settings.setdefault("public_url", url)
        config = ArtifactRepository(directory=str(storage), **settings)
        try:
            repository = await open_repository(config, database, reactor, "test-master", url)
        except BaseException:
            await port.stopListening()
            await database.stop()
            raise
        farm.putChild(b"artifacts", IResource(ArtifactResource(repository)))
        started = RunningRepository(repository, database, url, storage, port)
        running.append(started)
        return started

    yield start
    for started in running:
        await started.port.stopListening()
        await started.database.stop()
