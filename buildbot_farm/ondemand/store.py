"""The on-demand job table: one job per build key, its attempts, and the fencing token.

All SQL of on-demand builds is here. A job is in one of these states::

    queued  --build starts-->  running  --success-->  succeeded
    queued/running  --FAILURE-->  failed
    succeeded  --artifact removed (retention), noticed on submit-->  failed
    failed  --submitted again-->  queued (attempt + 1)
    queued/running  --EXCEPTION or RETRY-->  retry  --janitor-->  queued (attempt + 1) | failed
    queued/running  --buildset done or gone for stale_after-->  (janitor) queued | failed

``attempt`` is the fencing token: a result is recorded only by the attempt whose number
the job still carries, so a late build of a rescued attempt cannot overwrite a newer one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from buildbot_farm import db

CHANNEL = "farm_ondemand"
# The build properties that tie a Buildbot build to its job and attempt.
KEY_PROPERTY = "farm_build_key"
ATTEMPT_PROPERTY = "farm_attempt"
ACTIVE = ("queued", "running")
# buildset ids per heartbeat UPDATE: libpq (65,535) and SQLite (32,766 by default) cap the
# parameters of a statement
_IDS_PER_STATEMENT = 500


@dataclass(frozen=True)
class Artifact:
    """The file a job produced: repository path, download URL, size, sha256 and signature.

    ``signature`` is the base64 Ed25519 signature of the raw sha256 digest, or None.
    """

    path: str
    url: str
    size: int
    sha256: str
    signature: str | None = None


@dataclass(frozen=True)
class Job:
    """One row of the job table."""

    key: str
    scheduler: str
    parameters: str
    status: str
    attempt: int
    artifact: Artifact | None
    error: str | None

    @classmethod
    def from_row(cls, row: db.Row) -> Job:
        """The job of a ``farm_ondemand_jobs`` row."""
        artifact = None
        if row["artifact_path"] is not None:
            artifact = Artifact(row["artifact_path"], row["artifact_url"],
                                int(row["artifact_size"]), row["artifact_sha256"],
                                row["artifact_signature"])
        return cls(row["build_key"], row["scheduler"], row["parameters"], row["status"],
                   int(row["attempt"]), artifact, row["error"])


@dataclass(frozen=True)
class Submission:
    """What submitting a key did: the job, and whether an attempt now needs a build."""

    job: Job
    needs_build: bool


class JobTable:
    """The jobs and attempts of on-demand builds in the farm database."""

    def __init__(self, database: db.Database, clock: Callable[[], float], master: str) -> None:
        self._db = database
        self._clock = clock
        self._master = master

    async def submit(self, key: str, scheduler: str, parameters: str) -> Submission:
        """Find or create the job of ``key``; a new or failed job gets a new attempt."""
        now = self._clock()

        async def run(txn: db.Transaction) -> Submission:
            row = await self._select(txn, key)
            if row is None:
                inserted = await txn.execute(
                    "INSERT INTO farm_ondemand_jobs (build_key, scheduler, parameters, status,"
                    " attempt, created_at, updated_at) VALUES (?, ?, ?, 'queued', 1, ?, ?)"
                    " ON CONFLICT (build_key) DO NOTHING",
                    (key, scheduler, parameters, now, now),
                )
                if inserted:
                    await self._add_attempt(txn, key, 1, now)
                    return Submission(Job(key, scheduler, parameters, "queued", 1, None, None),
                                      True)
                row = await self._select(txn, key)
                assert row is not None, "a conflicting insert leaves the row"
            job = Job.from_row(row)
            if job.status != "failed":
                return Submission(job, False)
            return Submission(await self._requeue(txn, job, now), True)

        return await self._db.transaction(run)

    async def _select(self, txn: db.Transaction, key: str) -> db.Row | None:
        return await txn.fetchone(
            "SELECT * FROM farm_ondemand_jobs WHERE build_key = ?" + txn.dialect.for_update,
            (key,),
        )

    async def _add_attempt(self, txn: db.Transaction, key: str, attempt: int, now: float) -> None:
        await txn.execute(
            "INSERT INTO farm_ondemand_attempts (build_key, attempt, master, started_at)"
            " VALUES (?, ?, ?, ?)",
            (key, attempt, self._master, now),
        )

    async def _requeue(self, txn: db.Transaction, job: Job, now: float) -> Job:
        attempt = job.attempt + 1
        await txn.execute(
            "UPDATE farm_ondemand_jobs SET status = 'queued', attempt = ?, error = NULL,"
            " updated_at = ? WHERE build_key = ?",
            (attempt, now, job.key),
        )
        await self._add_attempt(txn, job.key, attempt, now)
        return Job(job.key, job.scheduler, job.parameters, "queued", attempt, None, None)

    async def expire(self, key: str, attempt: int, reason: str) -> bool:
        """Mark a succeeded job whose artifact is gone as failed, so the next submit rebuilds.

        Fenced by ``attempt``: of several callers that noticed, only the first changes it.
        """
        return bool(await self._db.execute(
            "UPDATE farm_ondemand_jobs SET status = 'failed', error = ?, updated_at = ?"
            " WHERE build_key = ? AND attempt = ? AND status = 'succeeded'",
            (reason, self._clock(), key, attempt),
        ))

    async def get(self, key: str) -> Job | None:
        """The job of ``key``, or None."""
        row = await self._db.fetchone(
            "SELECT * FROM farm_ondemand_jobs WHERE build_key = ?", (key,)
        )
        return None if row is None else Job.from_row(row)

    async def recent(self, limit: int) -> list[Job]:
        """The ``limit`` most recently changed jobs, newest first (read-only)."""
        rows = await self._db.fetchall(
            "SELECT * FROM farm_ondemand_jobs ORDER BY updated_at DESC, build_key LIMIT ?",
            (limit,),
        )
        return [Job.from_row(row) for row in rows]

    async def attempts(self, key: str) -> list[db.Row]:
        """The attempts of ``key``, oldest first."""
        return (await self.attempts_of([key]))[key]

    async def attempts_of(self, keys: list[str]) -> dict[str, list[db.Row]]:
        """The attempts of each of ``keys`` (every key present, oldest attempt first), in
        one query: a page of jobs reads its attempts at once, not job by job."""
        found: dict[str, list[db.Row]] = {key: [] for key in keys}
        if not keys:
            return found
        marks = ", ".join("?" for _ in keys)
        for row in await self._db.fetchall(
            "SELECT build_key, attempt, master, buildset_id, build_id, worker, result, error,"
            " started_at, finished_at FROM farm_ondemand_attempts"
            f" WHERE build_key IN ({marks}) ORDER BY build_key, attempt",
            tuple(keys),
        ):
            found[row.pop("build_key")].append(row)
        return found

    async def buildset_added(self, key: str, attempt: int, buildset_id: int) -> None:
        """Record the Buildbot buildset that carries ``attempt``, and wake its waiters."""

        async def run(txn: db.Transaction) -> None:
            await txn.execute(
                "UPDATE farm_ondemand_attempts SET buildset_id = ?"
                " WHERE build_key = ? AND attempt = ?",
                (buildset_id, key, attempt),
            )
            await txn.notify(CHANNEL, key)

        await self._db.transaction(run)

    async def attempt(self, key: str, attempt: int) -> db.Row | None:
        """Attempt ``attempt`` of ``key``: its ``buildset_id`` and ``build_id`` (None until
        Buildbot made them), or None when there is no such attempt."""
        return await self._db.fetchone(
            "SELECT buildset_id, build_id FROM farm_ondemand_attempts"
            " WHERE build_key = ? AND attempt = ?",
            (key, attempt),
        )

    async def started(self, key: str, attempt: int, build_id: int, worker: str | None) -> bool:
        """Mark ``attempt`` running on ``worker``; False when a newer attempt fenced it off."""
        now = self._clock()

        async def run(txn: db.Transaction) -> bool:
            changed = await txn.execute(
                "UPDATE farm_ondemand_jobs SET status = 'running', updated_at = ?"
                " WHERE build_key = ? AND attempt = ? AND status IN ('queued', 'running')",
                (now, key, attempt),
            )
            if changed:
                await txn.execute(
                    "UPDATE farm_ondemand_attempts SET build_id = ?, worker = ?"
                    " WHERE build_key = ? AND attempt = ?",
                    (build_id, worker, key, attempt),
                )
            return bool(changed)

        return await self._db.transaction(run)

    async def finish(
        self, key: str, attempt: int, result: str, artifact: Artifact | None, error: str | None
    ) -> bool:
        """Record how ``attempt`` ended and wake waiters; False when it was fenced off.

        ``result`` is Buildbot's result name. ``success`` with an artifact completes the
        job; ``exception`` and ``retry`` (a lost worker, a preempted host) leave it for the
        janitor to retry as a new attempt; anything else fails it.
        """
        now = self._clock()
        if result == "success" and artifact is None:
            result, error = "failure", error or "the build stored no artifact"
        status = {"success": "succeeded", "exception": "retry", "retry": "retry"}.get(
            result, "failed"
        )

        async def run(txn: db.Transaction) -> bool:
            await txn.execute(
                "UPDATE farm_ondemand_attempts SET result = ?, error = ?, finished_at = ?"
                " WHERE build_key = ? AND attempt = ?",
                (result, error, now, key, attempt),
            )
            a = artifact
            changed = await txn.execute(
                "UPDATE farm_ondemand_jobs SET status = ?, error = ?, updated_at = ?,"
                " artifact_path = ?, artifact_url = ?, artifact_size = ?, artifact_sha256 = ?,"
                " artifact_signature = ?"
                " WHERE build_key = ? AND attempt = ? AND status IN ('queued', 'running')",
                (status, error, now, a and a.path, a and a.url, a and a.size, a and a.sha256,
                 a and a.signature, key, attempt),
            )
            if changed:
                await txn.notify(CHANNEL, key)
            return bool(changed)

        return await self._db.transaction(run)

    async def touch(self, buildset_ids: list[int]) -> int:
        """Heartbeat: mark active jobs whose current attempt's buildset is still pending.

        Buildbot still owes those jobs a build (queued or running, on any master), so they
        are not stale. Returns how many jobs were touched.
        """
        touched, now = 0, self._clock()
        for start in range(0, len(buildset_ids), _IDS_PER_STATEMENT):
            chunk = buildset_ids[start : start + _IDS_PER_STATEMENT]
            marks = ", ".join("?" for _ in chunk)
            touched += await self._db.execute(
                "UPDATE farm_ondemand_jobs SET updated_at = ? WHERE status IN"
                " ('queued', 'running') AND EXISTS (SELECT 1 FROM farm_ondemand_attempts a"
                " WHERE a.build_key = farm_ondemand_jobs.build_key"
                f" AND a.attempt = farm_ondemand_jobs.attempt AND a.buildset_id IN ({marks}))",
                (now, *chunk),
            )
        return touched

    async def rescue(self, max_attempts: int, stale_before: float) -> list[Job]:
        """Janitor: requeue jobs to retry or gone stale; fail those out of attempts.

        Returns the requeued jobs, each needing a build for its new attempt. Rows are
        claimed with ``SKIP LOCKED`` so several masters' janitors never take the same job.
        """
        now = self._clock()

        async def run(txn: db.Transaction) -> list[Job]:
            rows = await txn.fetchall(
                "SELECT * FROM farm_ondemand_jobs WHERE status = 'retry'"
                " OR (status IN ('queued', 'running') AND updated_at < ?)"
                " ORDER BY updated_at" + txn.dialect.skip_locked,
                (stale_before,),
            )
            requeued = []
            for job in map(Job.from_row, rows):
                reason = "the build ended EXCEPTION or RETRY" if job.status == "retry" else (
                    "no news of its build within stale_after")
                if job.attempt >= max_attempts:
                    await txn.execute(
                        "UPDATE farm_ondemand_jobs SET status = 'failed', error = ?,"
                        " updated_at = ? WHERE build_key = ?",
                        (f"gave up after {job.attempt} attempt(s): {reason}", now, job.key),
                    )
                    await txn.notify(CHANNEL, job.key)
                    continue
                await txn.execute(
                    "UPDATE farm_ondemand_attempts SET result = COALESCE(result, 'abandoned'),"
                    " error = COALESCE(error, ?), finished_at = COALESCE(finished_at, ?)"
                    " WHERE build_key = ? AND attempt = ?",
                    (reason, now, job.key, job.attempt),
                )
                requeued.append(await self._requeue(txn, job, now))
            return requeued

        return await self._db.transaction(run)


def job_summary(job: Job, attempts: list[db.Row], download_url: str) -> dict[str, Any]:
    """The JSON body describing ``job`` (``GET /api/build/{key}``)."""
    body: dict[str, Any] = {
        "key": job.key,
        "status": job.status,
        "scheduler": job.scheduler,
        "attempt": job.attempt,
        "attempts": attempts,
        "error": job.error,
    }
    if job.artifact is not None:
        body["artifact"] = {"url": job.artifact.url, "path": job.artifact.path,
                            "size": job.artifact.size, "sha256": job.artifact.sha256,
                            "download": download_url}
    return body
