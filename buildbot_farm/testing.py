"""Test helpers for code that uses the farm: import them in your own tests.

Like ``treq.testing``, these are real implementations in a form convenient for tests, not
mocks: :func:`memory_database` is the SQLite backend on an in-memory database, migrated to
the current schema. Under Buildbot's ``TestReactorMixin`` its calls complete without
threads, so synchronous tests can use it.
"""

from __future__ import annotations

from typing import Any

from buildbot_farm import db

__all__ = ["memory_database"]


async def memory_database(reactor: Any) -> db.Database:
    """A started farm database in memory, at the newest schema; ``stop()`` it when done."""
    return await db.connect("sqlite://", reactor)
