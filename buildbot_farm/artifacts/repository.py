"""The running artifact repository: storage, index and tokens behind one asynchronous API.

The HTTP resource, the steps and the janitor all go through a :class:`Repository`; it runs
the storage's blocking calls on the reactor's thread pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote

from twisted.python import log

from buildbot_farm.artifacts import paths, tokens
from buildbot_farm.artifacts.config import ArtifactRepository
from buildbot_farm.artifacts.known_files import KnownFiles
from buildbot_farm.artifacts.paths import ANY_SEGMENT, Segments
from buildbot_farm.artifacts.s3 import S3Storage
from buildbot_farm.artifacts.s3_config import S3Bucket
from buildbot_farm.artifacts.storage import ArtifactStorage, Entry, LocalStorage, Stored
from buildbot_farm.artifacts.store import ArtifactIndex, Grant, IndexedFile, TokenRefused
from buildbot_farm.thread_pool import in_thread

T = TypeVar("T")


class OutOfScope(Exception):
    """A valid token used on a path outside its build's directory (403)."""


@dataclass(frozen=True)
class Described:
    """A stored file with its digest, for GET, listings and PROPFIND."""

    entry: Entry
    sha256: str


class Repository:
    """Artifacts of this farm: downloads for anyone, writes inside a token's scope.

    ``config`` is the master.cfg description, ``public_url`` the base URL downloads are
    announced under (ending in ``/``).
    """

    def __init__(
        self, config: ArtifactRepository, storage: ArtifactStorage, index: ArtifactIndex,
        reactor: Any, public_url: str,
    ) -> None:
        self.config = config
        self.storage = storage
        self.index = index
        self._reactor = reactor
        self.public_url = public_url if public_url.endswith("/") else public_url + "/"
        # The index in memory, for GETs of local files without a thread or database trip.
        self.known = KnownFiles()

    @property
    def reactor(self) -> Any:
        """The reactor the repository runs on (for asynchronous clients of the storage)."""
        return self._reactor

    def run_in_thread(self, fn: Callable[..., T], *args: Any) -> Any:
        """Run the blocking ``fn(*args)`` on the reactor's thread pool; a Deferred."""
        return in_thread(self._reactor, fn, *args)

    async def start(self) -> None:
        """Create the storage directories; load the index into memory (local storage)."""
        await self.run_in_thread(self.storage.thd_prepare)
        if isinstance(self.storage, LocalStorage):
            self.known.clear()
            await self.index.each_file(self.known.put)

    def url_for(self, segments: Segments, collection: bool = False) -> str:
        """The public download URL of ``segments``."""
        path = "/".join(quote(segment, safe="") for segment in segments)
        return self.public_url + path + ("/" if collection and segments else "")

    def build_prefix(self, kind: str, project: str, build: int) -> Segments:
        """The directory of a build's artifacts of one kind, by the layout."""
        return paths.render_layout(
            self.config.layout, {"kind": kind, "project": project, "build": build}
        )

    def token_scope(self, project: str, build: int) -> Segments:
        """The directories a build's token may write: its prefix for every kind."""
        return paths.render_layout(
            self.config.layout, {"kind": ANY_SEGMENT, "project": project, "build": build}
        )

    async def mint(self, build_id: int, project: str, build: int) -> str:
        """A token for build ``build_id`` writing in its directories."""
        return await self.index.mint(build_id, self.token_scope(project, build),
                                     self.config.token_ttl)

    async def authorise(self, header: bytes | None, segments: Segments) -> Grant:
        """The grant that allows writing ``segments``, or TokenRefused / OutOfScope."""
        try:
            credentials = tokens.parse_authorization(header)
        except tokens.BadCredentials as e:
            raise TokenRefused(str(e)) from e
        grant = await self.index.authorise(credentials)
        if not paths.scope_allows(grant.scope, segments):
            raise OutOfScope(
                f"this token writes only inside /{paths.join(grant.scope)}/ ('*': any one name)"
            )
        return grant

    async def store(
        self, segments: Segments, source: BinaryIO, expected_sha256: str | None, grant: Grant
    ) -> Stored:
        """Store an upload at ``segments`` and index it under the grant's build directory."""
        stored: Stored = await self.run_in_thread(
            self.storage.thd_store, segments, source, self.config.max_upload_size,
            expected_sha256, self.config.allow_overwrite,
        )
        await self._record(segments, segments[: len(grant.scope)], stored, grant.build_id)
        return stored

    async def adopt(
        self, segments: Segments, upload: Path, size: int, sha256: str,
        expected_sha256: str | None, grant: Grant,
    ) -> Stored:
        """Place an upload already streamed into the storage's temporary directory (with its
        size and sha256) at ``segments`` and index it under the grant's build directory."""
        stored: Stored = await self.run_in_thread(
            self.storage.thd_adopt, upload, segments, size, sha256, expected_sha256,
            self.config.allow_overwrite,
        )
        await self._record(segments, segments[: len(grant.scope)], stored, grant.build_id)
        return stored

    async def import_staged(
        self, staged: Path, segments: Segments, prefix: Segments, build_id: int
    ) -> Stored:
        """Move a file a step received from a worker into the repository and index it."""
        stored: Stored = await self.run_in_thread(
            self.storage.thd_import, staged, segments, self.config.allow_overwrite
        )
        await self._record(segments, prefix, stored, build_id)
        return stored

    async def _record(
        self, segments: Segments, prefix: Segments, stored: Stored, build_id: int | None
    ) -> None:
        prefix_path = paths.join(prefix)
        path = paths.join(segments)
        await self.index.record(
            path, prefix_path, stored.size, stored.sha256, build_id,
            self.config.retention_for(prefix_path),
        )
        self.known.put(path, stored.size, stored.sha256)

    async def stat(self, segments: Segments) -> Entry | None:
        """What is stored at ``segments``; None when nothing is."""
        entry: Entry | None = await self.run_in_thread(self.storage.thd_stat, segments)
        return entry

    async def describe(self, segments: Segments, entries: list[Entry]) -> list[Described]:
        """``entries`` (files in the collection ``segments``) with their sha256.

        Files the index does not know (written by nginx, say) are hashed and indexed now.
        """
        files = {paths.join((*segments, e.name)): e for e in entries if not e.is_dir}
        known: dict[str, IndexedFile] = await self.index.lookup(list(files))
        described = []
        for path, entry in files.items():
            row = known.get(path)
            if row is None or row.size != entry.size:
                size, sha256 = await self.run_in_thread(
                    self.storage.thd_digest, (*segments, entry.name)
                )
                await self.index.record(path, path.rpartition("/")[0], size, sha256, None, None)
            else:
                size, sha256 = row.size, row.sha256
            self.known.put(path, size, sha256)
            described.append(Described(entry, sha256))
        return described

    async def list(self, segments: Segments) -> list[Entry]:
        """The entries of the collection ``segments``."""
        entries: list[Entry] = await self.run_in_thread(self.storage.thd_list, segments)
        return entries

    async def mkcol(self, segments: Segments, grant: Grant) -> None:
        """Create the collection ``segments`` (its parents up to the scope's directory too)."""
        await self.run_in_thread(self.storage.thd_mkcol, segments, len(grant.scope))

    async def delete(self, segments: Segments) -> bool:
        """Delete a file or collection and its index rows; False when nothing was there."""
        self.known.forget(paths.join(segments))
        deleted: bool = await self.run_in_thread(self.storage.thd_delete, segments)
        await self.index.forget(paths.join(segments))
        self.known.forget(paths.join(segments))
        return deleted

    async def sweep(self) -> None:
        """Janitor work: drop dead tokens, remove build directories whose retention ran out."""
        await self.index.purge_tokens()
        for prefix in await self.index.expired_prefixes():
            segments = paths.split(prefix)
            await self.delete(segments)
            log.msg(f"farm artifacts: retention of /{prefix}/ ran out; removed it")


async def open_repository(
    config: ArtifactRepository, database: Any, reactor: Any, master_name: str,
    public_url: str, basedir: str = ".",
) -> Repository:
    """A started repository for ``config``; a relative directory is under ``basedir``.

    With ``config.storage`` an :class:`S3Bucket`, artifacts go to the bucket and the
    directory only spools uploads on their way there; its keys must be strings by then
    (FarmService renders secrets before it opens the repository).
    """
    root = Path(basedir, config.directory).resolve()
    storage: ArtifactStorage = LocalStorage(root)
    if isinstance(config.storage, S3Bucket):
        storage = S3Storage(config.storage, root, reactor)
    repository = Repository(
        config, storage, ArtifactIndex(database, reactor, master_name), reactor,
        config.public_url or public_url,
    )
    await repository.start()
    return repository
