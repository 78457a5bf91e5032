"""All SQL of the artifact repository: upload tokens (as hashes) and the artifact index."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from buildbot_farm import db
from buildbot_farm.artifacts import paths, tokens
from buildbot_farm.artifacts.paths import Segments


class TokenRefused(Exception):
    """The request's token is missing, unknown, expired, revoked or not this build's (401)."""


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: writing inside ``scope`` for build ``build_id``."""

    build_id: int
    scope: Segments


@dataclass(frozen=True)
class LiveToken:
    """A token that still allows uploads, without the token or its hash: who holds it."""

    build_id: int
    scope: str
    master: str
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class IndexedFile:
    """One row of the artifact index."""

    path: str
    size: int
    sha256: str
    created_at: float


class ArtifactIndex:
    """Tokens and the artifact index in the farm database; times come from ``clock``."""

    def __init__(self, database: db.Database, clock: Any, master_name: str) -> None:
        self._db = database
        self._clock = clock
        self._master = master_name

    async def mint(self, build_id: int, scope: Segments, ttl: float) -> str:
        """A new token for ``build_id`` writing inside ``scope``; only its hash is stored."""
        token = tokens.new_token()
        now = self._clock.seconds()
        await self._db.execute(
            "INSERT INTO farm_artifact_tokens"
            " (token_hash, build_id, scope, master, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (tokens.token_hash(token), build_id, paths.join(scope), self._master, now, now + ttl),
        )
        return token

    async def authorise(self, credentials: tokens.Credentials | None) -> Grant:
        """The grant of a presented token, or :class:`TokenRefused` saying why not."""
        if credentials is None:
            raise TokenRefused("uploads need the build's token (curl -u build-ID:TOKEN)")
        digest = tokens.token_hash(credentials.token)
        row = await self._db.fetchone(
            "SELECT token_hash, build_id, scope, expires_at, revoked_at"
            " FROM farm_artifact_tokens WHERE token_hash = ?",
            (digest,),
        )
        if row is None or not hmac.compare_digest(row["token_hash"], digest):
            raise TokenRefused("unknown token")
        if credentials.build_id is not None and credentials.build_id != row["build_id"]:
            raise TokenRefused(f"this token is not build {credentials.build_id}'s")
        if row["revoked_at"] is not None:
            raise TokenRefused("this token was revoked: its build has finished")
        if row["expires_at"] <= self._clock.seconds():
            raise TokenRefused("this token has expired")
        return Grant(int(row["build_id"]), paths.split(row["scope"]))

    async def revoke_build(self, build_id: int) -> int:
        """Revoke every live token of ``build_id``; return how many."""
        return await self._db.execute(
            "UPDATE farm_artifact_tokens SET revoked_at = ?"
            " WHERE build_id = ? AND revoked_at IS NULL",
            (self._clock.seconds(), build_id),
        )

    async def purge_tokens(self) -> int:
        """Delete the rows of tokens that can no longer be used; return how many."""
        now = self._clock.seconds()
        return await self._db.execute(
            "DELETE FROM farm_artifact_tokens WHERE expires_at <= ? OR revoked_at IS NOT NULL",
            (now,),
        )

    async def live_tokens(self) -> list[LiveToken]:
        """The tokens neither revoked nor expired, soonest to expire first (read-only)."""
        rows = await self._db.fetchall(
            "SELECT build_id, scope, master, created_at, expires_at FROM farm_artifact_tokens"
            " WHERE revoked_at IS NULL AND expires_at > ? ORDER BY expires_at, build_id",
            (self._clock.seconds(),),
        )
        return [LiveToken(int(r["build_id"]), r["scope"], r["master"], float(r["created_at"]),
                          float(r["expires_at"])) for r in rows]

    async def record(
        self, path: str, prefix: str, size: int, sha256: str, build_id: int | None,
        keep_for: float | None,
    ) -> None:
        """Index (or re-index) the file at ``path`` of the build directory ``prefix``."""
        now = self._clock.seconds()
        expires = None if keep_for is None else now + keep_for
        # One statement, not DELETE then INSERT: on PostgreSQL two transactions indexing the
        # same path at once would both find nothing to delete, and one INSERT would fail.
        await self._db.execute(
            "INSERT INTO farm_artifacts"
            " (path, prefix, size, sha256, build_id, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (path) DO UPDATE SET prefix = excluded.prefix, size = excluded.size,"
            " sha256 = excluded.sha256, build_id = excluded.build_id,"
            " created_at = excluded.created_at, expires_at = excluded.expires_at",
            (path, prefix, size, sha256, build_id, now, expires),
        )

    async def lookup(self, paths_wanted: Sequence[str]) -> dict[str, IndexedFile]:
        """The indexed files among ``paths_wanted``, by path."""
        found: dict[str, IndexedFile] = {}
        for start in range(0, len(paths_wanted), 500):
            chunk = list(paths_wanted[start : start + 500])
            marks = ", ".join("?" for _ in chunk)
            rows = await self._db.fetchall(
                "SELECT path, size, sha256, created_at FROM farm_artifacts"
                f" WHERE path IN ({marks})",
                chunk,
            )
            for row in rows:
                found[row["path"]] = IndexedFile(
                    row["path"], int(row["size"]), row["sha256"], float(row["created_at"])
                )
        return found

    async def each_file(self, take: Callable[[str, int, str], None], page: int = 10_000) -> None:
        """Call ``take(path, size, sha256)`` for every indexed file. Reads ``page`` rows at a
        time, so the rows in flight stay few whatever the index's size."""
        after = ""
        while True:
            rows = await self._db.fetchall(
                "SELECT path, size, sha256 FROM farm_artifacts WHERE path > ?"
                " ORDER BY path LIMIT ?", (after, page),
            )
            for row in rows:
                take(row["path"], int(row["size"]), row["sha256"])
            if len(rows) < page:
                return
            after = rows[-1]["path"]

    async def forget(self, path: str) -> None:
        """Remove ``path`` and everything indexed below it from the index."""
        await self._db.execute(
            "DELETE FROM farm_artifacts WHERE path = ? OR substr(path, 1, ?) = ?",
            (path, len(path) + 1, path + "/"),
        )

    async def expired_prefixes(self) -> list[str]:
        """Build directories whose retention has run out."""
        rows = await self._db.fetchall(
            "SELECT DISTINCT prefix FROM farm_artifacts WHERE expires_at <= ?",
            (self._clock.seconds(),),
        )
        return sorted(row["prefix"] for row in rows)
