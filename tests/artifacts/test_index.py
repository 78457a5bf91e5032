"""The artifact index and token SQL on both backends: SQLite and real PostgreSQL."""

from __future__ import annotations

import hashlib

import pytest_twisted
from twisted.internet import defer, task

from buildbot_farm import db
from buildbot_farm.artifacts import tokens
from buildbot_farm.artifacts.store import ArtifactIndex, Grant, TokenRefused
from tests.artifacts.conftest import StartRepository, basic
from tests.db.conftest import DbUrlFactory

SCOPE = ("*", "hello", "3")


async def refusal(index: ArtifactIndex, credentials: tokens.Credentials) -> str:
    """Why ``index`` refuses ``credentials`` (the test fails when it accepts them)."""
    try:
        await index.authorise(credentials)
    except TokenRefused as e:
        return str(e)
    raise AssertionError(f"{credentials} was accepted")


@pytest_twisted.ensureDeferred
async def test_a_token_works_until_revoked_or_expired(database: db.Database) -> None:
    """A token is its build's only, dies with revoke_build or its TTL, and purge drops it."""
    clock = task.Clock()
    clock.advance(1000)
    index = ArtifactIndex(database, clock, "m1")
    token = await index.mint(7, SCOPE, ttl=60)
    short = await index.mint(8, SCOPE, ttl=5)
    assert await index.authorise(tokens.Credentials(token, 7)) == Grant(7, SCOPE)
    assert await index.authorise(tokens.Credentials(token, None)) == Grant(7, SCOPE)
    assert "not build 8's" in await refusal(index, tokens.Credentials(token, 8))
    assert "unknown" in await refusal(index, tokens.Credentials(token + "x", 7))
    rows = await database.fetchall("SELECT token_hash FROM farm_artifact_tokens")
    assert token not in {row["token_hash"] for row in rows}

    clock.advance(5)
    assert "expired" in await refusal(index, tokens.Credentials(short, 8))
    assert await index.revoke_build(7) == 1
    assert await index.revoke_build(7) == 0
    assert "revoked" in await refusal(index, tokens.Credentials(token, 7))
    assert await index.purge_tokens() == 2
    assert await database.fetchall("SELECT build_id FROM farm_artifact_tokens") == []


@pytest_twisted.ensureDeferred
async def test_the_index_records_looks_up_and_forgets(database: db.Database) -> None:
    """Re-recording replaces a row; lookup reads in chunks; forget takes a subtree only."""
    clock = task.Clock()
    index = ArtifactIndex(database, clock, "m1")
    await index.record("bin/a/1/x", "bin/a/1", 1, "1" * 64, 5, None)
    await index.record("bin/a/1/x", "bin/a/1", 2, "2" * 64, 6, 10.0)
    paths = [f"bin/a/1/many/{n}" for n in range(1200)]
    for path in paths[::400]:
        await index.record(path, "bin/a/1", 3, "3" * 64, 5, None)
    await index.record("bin/a/10/y", "bin/a/10", 4, "4" * 64, 5, None)

    found = await index.lookup(["bin/a/1/x", *paths, "nothing"])
    every: list[tuple[str, int, str]] = []
    await index.each_file(lambda *row: every.append(row), page=2)
    assert sorted(every) == sorted([("bin/a/1/x", 2, "2" * 64), ("bin/a/10/y", 4, "4" * 64)]
                                   + [(path, 3, "3" * 64) for path in paths[::400]])
    assert found["bin/a/1/x"].size == 2
    assert found["bin/a/1/x"].sha256 == "2" * 64
    assert sorted(found) == sorted(["bin/a/1/x", *paths[::400]])

    clock.advance(10)
    assert await index.expired_prefixes() == ["bin/a/1"]
    await index.forget("bin/a/1")
    assert list(await index.lookup(["bin/a/1/x", *paths, "bin/a/10/y"])) == ["bin/a/10/y"]


@pytest_twisted.ensureDeferred
async def test_concurrent_records_of_one_path_leave_one_row(database: db.Database) -> None:
    """Several uploads indexing the same path at once all succeed and leave one row."""
    index = ArtifactIndex(database, task.Clock(), "m1")
    await defer.gatherResults([
        defer.ensureDeferred(index.record("bin/a/1/x", "bin/a/1", n, f"{n:064x}", 5, None))
        for n in range(8)
    ], consumeErrors=True)
    rows = await database.fetchall("SELECT size FROM farm_artifacts WHERE path = ?",
                                   ("bin/a/1/x",))
    assert len(rows) == 1


@pytest_twisted.ensureDeferred
async def test_tokens_over_http_on_each_backend(
    start_repository: StartRepository, backend: str, db_url_for: DbUrlFactory,
) -> None:
    """Over HTTP: a token uploads into its scope until its build's tokens are revoked."""
    repo = await start_repository(database_url=db_url_for(backend))
    auth = basic(2, await repo.token(build_id=2, project="kept", build=5))
    assert (await repo.request("PUT", "bin/kept/5/a", data=b"a", headers=auth)).code == 201
    assert (await repo.request("PUT", "bin/other/5/a", data=b"a", headers=auth)).code == 403
    await repo.repository.index.revoke_build(2)
    assert (await repo.request("PUT", "bin/kept/5/b", data=b"b", headers=auth)).code == 401
    listing = (await repo.request("GET", "bin/kept/5/?format=json")).json()
    assert [(e["name"], e["sha256"]) for e in listing["entries"]] == [
        ("a", hashlib.sha256(b"a").hexdigest())
    ]
