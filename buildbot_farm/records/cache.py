"""``RecentRecords``: a bounded cache of records recently served (pure logic).

Records are immutable, so a cached record can only become wrong by being deleted. A delete
through this process forgets the entry at once; one through another master sharing the
database is seen after ``ttl`` seconds at most.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class RecentRecords(Generic[K, V]):
    """Least-recently-used cache of at most ``capacity`` entries, each fresh for ``ttl`` s."""

    def __init__(self, capacity: int = 10_000, ttl: float = 60.0) -> None:
        self._capacity = capacity
        self._ttl = ttl
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K, now: float) -> V | None:
        """The value cached under ``key`` if it is still fresh at ``now``."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, value = entry
        if now - stored_at > self._ttl:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, now: float) -> None:
        """Cache ``value`` under ``key``, dropping the least recently used past capacity."""
        self._entries[key] = (now, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def forget(self, key: K) -> None:
        """Drop ``key`` (it was deleted)."""
        self._entries.pop(key, None)
