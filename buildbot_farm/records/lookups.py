"""``LookupBatches``: lookups by key that wait at the same time share one database call.

Under load, requests for single records queue for the database; answering the ones that
queued together with one query costs one round trip (and, on SQLite, one thread-pool hop)
instead of one each. A lookup made while no fetch runs starts one at once, so a lone request
waits for nothing; the rest wait for the fetch running and go together in the next.

One fetch at a time on both backends: with a second one in flight on PostgreSQL, batches
were half the size, and at 100,000 records under wrk (issue 16, 2026-12-07) the records
server spent 119-136 us of CPU per GET against 104-126 us, and PostgreSQL about twice as
much per GET (19-26 us against 10-16 us); the server is the bottleneck.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Callable, Generic, TypeVar

from twisted.internet import defer
from twisted.python import failure

K = TypeVar("K")
V = TypeVar("V")


class LookupBatches(Generic[K, V]):
    """Answers ``get(key)`` by calling ``fetch(keys)`` for every key waiting at that moment.

    ``fetch`` returns a dict of the keys it found; a missing key is answered with None.
    One fetch runs at a time, of at most ``batch_size`` keys; a failed fetch fails every
    lookup of its batch.
    """

    def __init__(
        self,
        fetch: Callable[[list[K]], Coroutine[Any, Any, dict[K, V]]],
        batch_size: int = 100,
    ) -> None:
        self._fetch = fetch
        self._batch_size = batch_size
        self._waiting: dict[K, list[defer.Deferred[V | None]]] = {}
        self._running = False

    def get(self, key: K) -> defer.Deferred[V | None]:
        """The value stored under ``key``, or None, once a fetch has looked it up."""
        answer: defer.Deferred[V | None] = defer.Deferred()
        self._waiting.setdefault(key, []).append(answer)
        if not self._running:
            self._start()
        return answer

    def _start(self) -> None:
        keys = list(self._waiting)[: self._batch_size]
        batch = {key: self._waiting.pop(key) for key in keys}
        self._running = True
        fetched: defer.Deferred[dict[K, V]] = defer.Deferred.fromCoroutine(self._fetch(keys))

        def deliver(found: dict[K, V]) -> None:
            for key, answers in batch.items():
                value = found.get(key)
                for answer in answers:
                    answer.callback(value)

        def fail(reason: failure.Failure) -> None:
            for answers in batch.values():
                for answer in answers:
                    answer.errback(reason)

        def next_batch(_: object) -> None:
            self._running = False
            if self._waiting:
                self._start()

        fetched.addCallbacks(deliver, fail).addBoth(next_batch)
