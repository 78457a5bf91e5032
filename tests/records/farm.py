"""A RecordsHost as FarmService runs it, on a fake farm context, for the records tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from buildbot_farm import db
from buildbot_farm.records.host import RecordsHost
from buildbot_farm.testing import FakeFarmContext

if TYPE_CHECKING:
    from buildbot_farm.artifacts.repository import Repository


def records_host(
    database: db.Database, reactor: Any, basedir: str, buildbot_url: str,
    repository: Repository | None = None,
) -> tuple[RecordsHost, FakeFarmContext]:
    """A RecordsHost (not yet configured) on ``database`` and a master with ``reactor``,
    ``basedir`` (for key files) and ``buildbot_url``; and its farm, to change them."""
    master = SimpleNamespace(reactor=reactor, basedir=basedir, name="test-master",
                             config=SimpleNamespace(buildbotURL=buildbot_url))
    farm = FakeFarmContext(master, database)
    return RecordsHost(farm, lambda: repository), farm
