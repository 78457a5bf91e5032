"""What the callers of a pipelined connection get back: the readers of a statement's answer,
the functions told its outcome, and the group of results a statement's Sync closes.

In pipeline mode a statement's results come back as a group ended by the Sync sent after
it: a BEGIN sent in front of it and a PREPARE answer first, then the statement itself.
:class:`Group` keeps the statement's answer and the group's first error; the connection
then hands the answer to the caller's :data:`Reader` and the outcome to its :data:`Finish`.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from psycopg import abc as psycopg_abc
from psycopg import errors, pq
from twisted.internet import defer
from twisted.python import failure

from buildbot_farm.db._api import Row

T = TypeVar("T")
# reads a statement's answer (None when there was none)
Reader = Callable[[pq.abc.PGresult | None, psycopg_abc.Transformer], T]
Finish = Callable[[Any], None]  # called once with a statement's result, or its Failure
_ANSWERS = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK, pq.ExecStatus.EMPTY_QUERY)


class Group:
    """A statement sent with its Sync (and what went in front of it): what its caller wants."""

    __slots__ = ("answer", "error", "finish", "prepare_at", "prepared", "read", "script", "seen")

    def __init__(self, read: Reader[Any], finish: Finish, script: bool = False) -> None:
        self.read = read
        self.finish = finish
        self.script = script  # sent over the simple protocol: ends with no Sync, at a None
        self.answer: pq.abc.PGresult | None = None
        self.error: Exception | None = None
        self.prepared: str | None = None  # the name a PREPARE in the group creates
        self.prepare_at = -1  # which of the group's results is that PREPARE's
        self.seen = 0

    def take(self, result: pq.abc.PGresult) -> bool:
        """Keep what ``result`` says; whether the PREPARE it answers failed."""
        index, self.seen = self.seen, self.seen + 1
        if result.status in _ANSWERS:
            self.answer = result
            return False
        if result.status == pq.ExecStatus.FATAL_ERROR and self.error is None:
            self.error = errors.error_from_result(result, encoding="utf-8")
        return index == self.prepare_at  # it failed, or an error before it skipped it


def rowcount(result: pq.abc.PGresult | None, loader: psycopg_abc.Transformer) -> int:
    """How many rows the statement changed or returned (-1 for one that counts none)."""
    tuples = result.command_tuples if result is not None else None
    return -1 if tuples is None else tuples


def rows(result: pq.abc.PGresult | None, loader: psycopg_abc.Transformer) -> list[Row]:
    """The rows of the query as dicts keyed by column name."""
    if result is None or result.status != pq.ExecStatus.TUPLES_OK:
        return []
    names = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
    loader.set_pgresult(result)
    return loader.load_rows(0, result.ntuples, lambda values: dict(zip(names, values)))


def nothing(result: pq.abc.PGresult | None, loader: psycopg_abc.Transformer) -> None:
    """Read nothing from a statement that returns nothing."""


def settle(done: defer.Deferred[T]) -> Finish:
    """The :data:`Finish` that fires ``done`` with a statement's outcome."""

    def finish(outcome: Any) -> None:
        if isinstance(outcome, failure.Failure):
            done.errback(outcome)
        else:
            done.callback(outcome)

    return finish
