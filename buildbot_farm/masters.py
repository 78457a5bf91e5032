"""``MasterTable``: the masters of a farm and their heartbeats (all SQL of ``farm_masters``).

Each FarmService writes its row at every heartbeat and removes it when it stops, so every
master of a shared farm database (and ``/plugins/farm/status``) knows which ones are alive.
"""

from __future__ import annotations

from typing import Any

from buildbot_farm import db

__all__ = ["MasterTable"]


class MasterTable:
    """The ``farm_masters`` table of ``database``."""

    def __init__(self, database: db.Database) -> None:
        self._database = database

    async def heartbeat(self, name: str, now: float, version: str) -> None:
        """Record that the master ``name`` (running farm ``version``) is alive at ``now``."""

        async def record(txn: db.Transaction) -> None:
            changed = await txn.execute(
                "UPDATE farm_masters SET heartbeat_at = ?, version = ? WHERE name = ?",
                (now, version, name),
            )
            if not changed:
                await txn.execute(
                    "INSERT INTO farm_masters (name, started_at, heartbeat_at, version)"
                    " VALUES (?, ?, ?, ?)",
                    (name, now, now, version),
                )

        await self._database.transaction(record)

    async def forget(self, name: str) -> None:
        """Remove the master ``name`` (it stopped); nothing when it has no row."""
        await self._database.execute("DELETE FROM farm_masters WHERE name = ?", (name,))

    async def all(self) -> list[dict[str, Any]]:
        """Every master's ``name``, ``started_at``, ``heartbeat_at`` and ``version``, by name."""
        return await self._database.fetchall(
            "SELECT name, started_at, heartbeat_at, version FROM farm_masters ORDER BY name"
        )
