"""``LeaseTable``: every SQL statement about buildlets and leases, on the farm database."""

from __future__ import annotations

from typing import Any, Callable

from buildbot_farm import db
from buildbot_farm.leases.model import ExpiryPolicy, Lease, LeaseState, LostLease, buildlet_name

# Announces "a buildlet of coordinator PAYLOAD freed up or became free to lease".
CHANNEL = "farm_buildlets"
_COLUMNS = (
    "name, type, state, owner, url, secret, handle, created_at, leased_at, renewed_at, expires_at"
)
_LOST_COLUMNS = "name, type, owner, reason, lost_at"


def _lease(row: db.Row) -> Lease:
    return Lease(
        name=row["name"],
        type=row["type"],
        state=LeaseState(row["state"]),
        owner=row["owner"],
        url=row["url"],
        secret=row["secret"],
        handle=row["handle"],
        created_at=float(row["created_at"]),
        leased_at=_maybe_float(row["leased_at"]),
        renewed_at=_maybe_float(row["renewed_at"]),
        expires_at=_maybe_float(row["expires_at"]),
    )


def _lost(row: db.Row) -> LostLease:
    return LostLease(name=row["name"], type=row["type"], owner=row["owner"],
                     reason=row["reason"], lost_at=float(row["lost_at"]))


def _maybe_float(value: Any) -> float | None:
    return None if value is None else float(value)


class LeaseTable:
    """Reads and writes ``farm_buildlets`` for one coordinator (named ``coordinator``)."""

    def __init__(self, database: db.Database, coordinator: str, policy: ExpiryPolicy) -> None:
        self._db = database
        self._coordinator = coordinator
        self._policy = policy

    async def add_starting(
        self, name: str, buildlet_type: str, provider: str, owner: str | None, now: float
    ) -> None:
        """Record a buildlet about to be asked of its provider (so a crash cannot lose it)."""
        await self._db.execute(
            f"INSERT INTO farm_buildlets ({_COLUMNS}, provider, coordinator)"
            " VALUES (?, ?, ?, ?, '', '', '', ?, NULL, NULL, NULL, ?, ?)",
            (name, buildlet_type, LeaseState.STARTING.value, owner, now, provider,
             self._coordinator),
        )

    async def mark_ready(
        self, name: str, url: str, secret: str, handle: str, now: float
    ) -> Lease:
        """The provider started it: store how to reach it; it is now leased, or idle (warm)."""
        lease = await self.get(name)
        if lease is None:
            raise LookupError(f"buildlet {name} vanished while starting")
        state = LeaseState.LEASED if lease.owner else LeaseState.IDLE
        expires = self._policy.expires_at(now, now) if lease.owner else None
        leased_at = now if lease.owner else None

        async def update(txn: db.Transaction) -> None:
            await txn.execute(
                "UPDATE farm_buildlets SET state = ?, url = ?, secret = ?, handle = ?,"
                " leased_at = ?, renewed_at = ?, expires_at = ? WHERE name = ?",
                (state.value, url, secret, handle, leased_at, leased_at, expires, name),
            )
            if state is LeaseState.IDLE:
                await txn.notify(CHANNEL, self._coordinator)

        await self._db.transaction(update)
        ready = await self.get(name)
        assert ready is not None
        return ready

    async def set_handle(self, name: str, handle: str) -> None:
        """Remember the provider's handle as soon as it exists, before the buildlet is ready."""
        await self._db.execute(
            "UPDATE farm_buildlets SET handle = ? WHERE name = ?", (handle, name)
        )

    async def next_name(self, owner: str, buildlet_type: str) -> str:
        """Reserve the next ``owner-TYPE-N`` name (never handed out twice)."""

        async def reserve(txn: db.Transaction) -> str:
            return await _reserve_name(txn, owner, buildlet_type)

        return await self._db.transaction(reserve)

    async def get(self, name: str) -> Lease | None:
        """The buildlet called ``name``, or None."""
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM farm_buildlets WHERE name = ?", (name,)
        )
        return _lease(row) if row else None

    async def owned_by(self, owner: str) -> list[Lease]:
        """``owner``'s leased buildlets, oldest first."""
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM farm_buildlets WHERE owner = ? AND state = ?"
            " ORDER BY leased_at, name",
            (owner, LeaseState.LEASED.value),
        )
        return [_lease(row) for row in rows]

    async def all(self) -> list[Lease]:
        """Every buildlet this coordinator has, in any state."""
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM farm_buildlets WHERE coordinator = ? ORDER BY name",
            (self._coordinator,),
        )
        return [_lease(row) for row in rows]

    async def count(self, buildlet_type: str) -> int:
        """How many buildlets of ``buildlet_type`` exist (any state)."""
        row = await self._db.fetchone(
            "SELECT COUNT(*) AS n FROM farm_buildlets WHERE type = ? AND coordinator = ?",
            (buildlet_type, self._coordinator),
        )
        return int(row["n"]) if row else 0

    async def count_idle(self, buildlet_type: str) -> int:
        """How many warm, unleased buildlets of ``buildlet_type`` are ready."""
        row = await self._db.fetchone(
            "SELECT COUNT(*) AS n FROM farm_buildlets WHERE type = ? AND state = ?"
            " AND coordinator = ?",
            (buildlet_type, LeaseState.IDLE.value, self._coordinator),
        )
        return int(row["n"]) if row else 0

    async def lease_idle(self, owner: str, buildlet_type: str, now: float) -> Lease | None:
        """Hand a warm idle buildlet of ``buildlet_type`` to ``owner`` (renamed for them)."""

        async def claim(txn: db.Transaction) -> str | None:
            rows = await txn.fetchall_prepared(
                "farm_lease_claim_idle",
                "SELECT name FROM farm_buildlets WHERE type = ? AND state = ? AND coordinator = ?"
                " ORDER BY created_at LIMIT 1" + txn.dialect.skip_locked,
                (buildlet_type, LeaseState.IDLE.value, self._coordinator),
            )
            if not rows:
                return None
            row = rows[0]
            new_name = await _reserve_name(txn, owner, buildlet_type)
            await txn.execute(
                "UPDATE farm_buildlets SET name = ?, state = ?, owner = ?, leased_at = ?,"
                " renewed_at = ?, expires_at = ? WHERE name = ?",
                (
                    new_name, LeaseState.LEASED.value, owner, now, now,
                    self._policy.expires_at(now, now), row["name"],
                ),
            )
            return new_name

        claimed = await self._db.transaction(claim)
        return await self.get(claimed) if claimed else None

    async def renew(self, name: str, now: float) -> None:
        """Push a leased buildlet's expiry forward: it was just used."""

        async def push(txn: db.Transaction) -> None:
            row = await txn.fetchone(
                "SELECT leased_at FROM farm_buildlets WHERE name = ? AND state = ?"
                + txn.dialect.for_update,
                (name, LeaseState.LEASED.value),
            )
            if row is not None:
                await txn.execute(
                    "UPDATE farm_buildlets SET renewed_at = ?, expires_at = ? WHERE name = ?",
                    (now, self._policy.expires_at(float(row["leased_at"]), now), name),
                )

        await self._db.transaction(push)

    async def mark_halting(self, name: str) -> bool:
        """Move a buildlet to HALTING; False when it was already halting or gone."""
        changed = await self._db.execute(
            "UPDATE farm_buildlets SET state = ? WHERE name = ? AND state <> ?",
            (LeaseState.HALTING.value, name, LeaseState.HALTING.value),
        )
        return changed > 0

    async def remove(self, name: str) -> None:
        """Forget a destroyed buildlet (its pool has room again: announced on ``CHANNEL``)."""

        async def delete(txn: db.Transaction) -> None:
            await txn.execute("DELETE FROM farm_buildlets WHERE name = ?", (name,))
            await txn.notify(CHANNEL, self._coordinator)

        await self._db.transaction(delete)

    async def mark_lost(self, lease: Lease, reason: str, now: float, keep: int) -> None:
        """Remember that ``lease`` was lost, and why; keep this coordinator's latest ``keep``."""

        async def record(txn: db.Transaction) -> None:
            await txn.execute("DELETE FROM farm_lost_buildlets WHERE name = ?", (lease.name,))
            await txn.execute(
                f"INSERT INTO farm_lost_buildlets ({_LOST_COLUMNS}, coordinator)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (lease.name, lease.type, lease.owner, reason, now, self._coordinator),
            )
            await txn.execute(
                "DELETE FROM farm_lost_buildlets WHERE coordinator = ? AND name NOT IN"
                " (SELECT name FROM farm_lost_buildlets WHERE coordinator = ?"
                " ORDER BY lost_at DESC, name LIMIT ?)",
                (self._coordinator, self._coordinator, keep),
            )

        await self._db.transaction(record)

    async def lost(self, name: str) -> LostLease | None:
        """Buildlet ``name`` if it was lost (and is among those remembered), else None."""
        row = await self._db.fetchone(
            f"SELECT {_LOST_COLUMNS} FROM farm_lost_buildlets WHERE name = ?", (name,)
        )
        return _lost(row) if row else None

    async def lost_of(self, owner: str | None = None, limit: int = 1000) -> list[LostLease]:
        """The latest ``limit`` lost buildlets remembered (``owner``'s only, when given),
        newest first."""
        where, parameters = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        rows = await self._db.fetchall(
            f"SELECT {_LOST_COLUMNS} FROM farm_lost_buildlets {where}"
            " ORDER BY lost_at DESC, name LIMIT ?",
            (*parameters, limit),
        )
        return [_lost(row) for row in rows]

    async def listen(self, freed: Callable[[], None]) -> db.Subscription:
        """Call ``freed()`` whenever one of this coordinator's buildlets frees up or is free.

        On PostgreSQL this hears every process that changes this coordinator's rows.
        """

        def heard(payload: str) -> None:
            if payload == self._coordinator:
                freed()

        return await self._db.listen(CHANNEL, heard)

    async def provider_kinds(self) -> dict[str, str]:
        """The provider kind (``process``, ``docker``, ``reverse``) of each buildlet, by name."""
        rows = await self._db.fetchall(
            "SELECT name, provider FROM farm_buildlets WHERE coordinator = ?",
            (self._coordinator,),
        )
        return {row["name"]: row["provider"] for row in rows}

    async def expired(self, now: float) -> list[Lease]:
        """Leased buildlets whose lease has run out."""
        rows = await self._db.fetchall(
            f"SELECT {_COLUMNS} FROM farm_buildlets WHERE state = ? AND expires_at <= ?"
            " AND coordinator = ?",
            (LeaseState.LEASED.value, now, self._coordinator),
        )
        return [_lease(row) for row in rows]


async def coordinator_names(database: db.Database) -> list[str]:
    """The names of the coordinators that have buildlets in ``database``."""
    rows = await database.fetchall(
        "SELECT DISTINCT coordinator FROM farm_buildlets ORDER BY coordinator"
    )
    return [row["coordinator"] for row in rows]


async def _reserve_name(txn: db.Transaction, owner: str, buildlet_type: str) -> str:
    row = await txn.fetchone(
        "SELECT next_number FROM farm_buildlet_numbers WHERE owner = ? AND type = ?"
        + txn.dialect.for_update,
        (owner, buildlet_type),
    )
    number = int(row["next_number"]) if row else 0
    if row:
        await txn.execute(
            "UPDATE farm_buildlet_numbers SET next_number = ? WHERE owner = ? AND type = ?",
            (number + 1, owner, buildlet_type),
        )
    else:
        await txn.execute(
            "INSERT INTO farm_buildlet_numbers (owner, type, next_number) VALUES (?, ?, ?)",
            (owner, buildlet_type, number + 1),
        )
    return buildlet_name(owner, buildlet_type, number)
