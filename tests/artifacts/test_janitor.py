"""The janitor: expired build directories and dead tokens go, the rest stays (both backends)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import task

from tests.artifacts.conftest import StartRepository, basic
from tests.db.conftest import DbUrlFactory
from tests.harness.twisted_reactor import reactor


@pytest_twisted.ensureDeferred
async def test_expired_builds_and_their_index_rows_are_removed(
    start_repository: StartRepository, backend: str, db_url_for: DbUrlFactory,
) -> None:
    """A build under a short-lived prefix is deleted with its index rows; others are kept."""
    repo = await start_repository(database_url=db_url_for(backend),
                                  retention={"bin/nightly": 0.2})
    short = basic(1, await repo.token(build_id=1, project="nightly", build=5))
    kept = basic(2, await repo.token(build_id=2, project="release", build=5))
    assert (await repo.request("PUT", "bin/nightly/5/a", data=b"a", headers=short)).code == 201
    assert (await repo.request("PUT", "bin/release/5/a", data=b"a", headers=kept)).code == 201
    await repo.repository.index.revoke_build(2)
    await task.deferLater(reactor, 0.3, lambda: None)
    await repo.repository.sweep()
    assert not (repo.root / "bin/nightly/5").exists()
    assert (repo.root / "bin/release/5/a").exists()
    assert await repo.repository.index.lookup(["bin/nightly/5/a"]) == {}
    rows = await repo.database.fetchall("SELECT build_id FROM farm_artifact_tokens")
    assert [row["build_id"] for row in rows] == [1]
