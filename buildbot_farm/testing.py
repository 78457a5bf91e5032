"""Test helpers for code that uses the farm: import them in your own tests.

Like ``treq.testing``, these are real implementations in a form convenient for tests, not
mocks: :func:`memory_database` is the SQLite backend on an in-memory database, migrated to
the current schema. Under Buildbot's ``TestReactorMixin`` its calls complete without
threads, so synchronous tests can use it. :class:`FakeFarmContext` stands in for
FarmService where a capability's host (or a sixth capability of your own) is handed a
:class:`~buildbot_farm.context.FarmContext`: the database and master are yours, the
periodic work is recorded for the test to run, and the web root is a real one.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Callable

from twisted.internet import defer

from buildbot_farm import db
from buildbot_farm.web import FarmRoot

__all__ = ["FakeFarmContext", "memory_database"]


async def memory_database(reactor: Any) -> db.Database:
    """A started farm database in memory, at the newest schema; ``stop()`` it when done."""
    return await db.connect("sqlite://", reactor)


class FakeFarmContext:
    """A :class:`~buildbot_farm.context.MountingFarmContext` for tests: FarmService's parts
    a capability uses, without a running service.

    ``master`` is any master the capability can use (Buildbot's ``fakemaster.make_master``,
    or a smaller fake with what the capability reads); ``database`` the farm database (see
    :func:`memory_database`), None for a farm whose database is not open. Periodic work is
    not scheduled: :attr:`periodic` holds each task's interval, and :meth:`run_periodic`
    runs a task's work once. Resources mount on :attr:`web_root`, a real ``FarmRoot``.
    """

    def __init__(self, master: Any, database: db.Database | None) -> None:
        self.master = master
        self.database = database
        self.web_root = FarmRoot()
        #: The interval of each periodic task added and not removed, by name.
        self.periodic: dict[str, float] = {}
        self._work: dict[str, Callable[[], Awaitable[Any]]] = {}

    def add_periodic(
        self, name: str, interval: float, work: Callable[[], Awaitable[Any]]
    ) -> object:
        """Record the task ``name`` (replacing one of that name); it is never run by itself."""
        self.periodic[name] = interval
        self._work[name] = work
        return name

    def remove_periodic(self, name: str) -> defer.Deferred[Any] | None:
        """Forget the task ``name``; None, as no run of it can be in progress."""
        self.periodic.pop(name, None)
        self._work.pop(name, None)
        return None

    async def run_periodic(self, name: str) -> Any:
        """Run the work of the task ``name`` once, as its next period would; its result.

        Raises KeyError naming the tasks there are when there is no task ``name``.
        """
        if name not in self._work:
            raise KeyError(f"no periodic task {name!r}; there are {sorted(self._work)}")
        return await self._work[name]()
