"""The jobs and live-token parts of the pages, from real farm databases on both backends."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.task import Clock

from buildbot_farm import db
from buildbot_farm.artifacts import paths
from buildbot_farm.artifacts.store import ArtifactIndex
from buildbot_farm.dashboard._artifacts import live_tokens_section
from buildbot_farm.dashboard._builds import BuildLinks
from buildbot_farm.dashboard._jobs import jobs_body
from buildbot_farm.ondemand.store import Artifact, JobTable

KEY = "c0ffee" + "0" * 58
API = "/plugins/farm/api/"


class FakeData:
    """Buildbot's data API for two known builds of builder 3 ("tool"), one of them running."""

    def __init__(self) -> None:
        self.builds = {41: {"builderid": 3, "number": 7, "complete": True},
                       42: {"builderid": 3, "number": 8, "complete": False}}

    async def get(self, path: tuple[Any, ...], filters: Any = None) -> Any:
        """The build, builder or running builds at ``path``, like ``master.data.get``."""
        if path == ("builds",):
            return [b for b in self.builds.values() if not b["complete"]]
        if path[0] == "builds":
            return self.builds.get(path[1])
        if path == ("builders", 3):
            return {"name": "tool"}
        return None


def links() -> BuildLinks:
    """Links into a web UI at ``/`` of a master whose data API is FakeData."""
    return BuildLinks(type("Master", (), {"data": FakeData()})(), "/")


@pytest_twisted.ensureDeferred
async def test_jobs_show_key_parameters_attempts_build_and_download(
    database: db.Database,
) -> None:
    """A job retried once shows both attempts with worker, result, error and build links."""
    clock = Clock()
    clock.advance(1000)
    jobs = JobTable(database, clock.seconds, "m1")
    await jobs.submit(KEY, "tool", '{"os":"linux","plugins":["a@1","b@2"]}')
    await jobs.started(KEY, 1, 41, "w1")
    await jobs.finish(KEY, 1, "failure", None, "build 41 ended failure")
    body, busy = await jobs_body(type("Host", (), {"jobs": jobs})(), links(), API)
    assert busy is False
    assert "build 41 ended failure" in body
    clock.advance(5)
    await jobs.submit(KEY, "tool", '{"os":"linux","plugins":["a@1","b@2"]}')
    await jobs.started(KEY, 2, 42, "w2")
    body, busy = await jobs_body(type("Host", (), {"jobs": jobs})(), links(), API)
    assert busy is True
    assert f'href="{API}build/{KEY}"' in body
    assert "<code>os=linux</code><br><code>plugins=a@1,b@2</code>" in body
    assert "#1 on w1 failure" in body
    assert '<a href="/#/builders/3/builds/7" target="_top" class="build">tool #7</a>' in body
    assert "#2 on w2 in progress" in body
    assert "tool #8</a>" in body
    assert "download" not in body
    await jobs.finish(KEY, 2, "success",
                      Artifact("bin/tool/8/tool", "http://x/bin/tool/8/tool", 2048, "f" * 64),
                      None)
    body, busy = await jobs_body(type("Host", (), {"jobs": jobs})(), links(), API)
    assert busy is False
    assert f'<a href="{API}download/{KEY}">download</a>' in body
    assert "2.0 KiB" in body


@pytest_twisted.ensureDeferred
async def test_no_jobs_yet_says_how_to_submit_one(database: db.Database) -> None:
    """With on-demand on and no job, the page says how to submit one (form or curl)."""
    jobs = JobTable(database, Clock().seconds, "m1")
    body, busy = await jobs_body(type("Host", (), {"jobs": jobs})(), links(), API)
    assert "No on-demand jobs yet" in body
    assert f"{API}build" in body
    assert busy is False


@pytest_twisted.ensureDeferred
async def test_live_tokens_show_their_build_never_the_token(database: db.Database) -> None:
    """Live tokens list build, scope and expiry; revoked and expired ones drop out."""
    clock = Clock()
    clock.advance(1000)
    index = ArtifactIndex(database, clock, "m1")
    repository = type("Repository", (), {"index": index})()
    held = await index.mint(42, paths.split("*/tool/8"), 600)
    await index.mint(41, paths.split("*/tool/7"), 60)
    await index.mint(40, paths.split("*/tool/6"), 600)
    await index.revoke_build(40)
    body, busy = await live_tokens_section(repository, links(), clock.seconds())
    assert busy is True
    assert held not in body
    assert [t.build_id for t in await index.live_tokens()] == [41, 42]
    assert "tool #8</a>" in body
    assert "<code>/*/tool/8/</code>" in body
    assert "in 10 min 0 s" in body
    assert "tool #7</a>" in body
    assert "/*/tool/6/" not in body
    clock.advance(60)
    assert [t.build_id for t in await index.live_tokens()] == [42]
    await index.revoke_build(42)
    body, busy = await live_tokens_section(repository, links(), clock.seconds())
    assert busy is False
    assert "No build holds a live upload token." in body


@pytest_twisted.ensureDeferred
async def test_a_build_buildbot_does_not_know_is_shown_by_its_id(database: db.Database) -> None:
    """A token of a build missing from Buildbot's database is shown by id, without a link."""
    clock = Clock()
    index = ArtifactIndex(database, clock, "m1")
    await index.mint(99, paths.split("*/gone/1"), 600)
    body, _ = await live_tokens_section(type("R", (), {"index": index})(), links(), 0)
    assert "build id 99 (not in Buildbot)" in body
