"""The records API inside FarmService: its resource, signing key and optional own port."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from buildbot import config
from twisted.internet import endpoints
from twisted.python import log
from twisted.web import server

from buildbot_farm.records.api import BuildAlias, RecordsAPI, RecordsResource
from buildbot_farm.records.chain_api import RecordChainResource
from buildbot_farm.records.config import BuildRecords
from buildbot_farm.records.model import BuildRecord
from buildbot_farm.records.openapi import OPENAPI
from buildbot_farm.records.provenance import NothingToAttest, Signer, signed_provenance
from buildbot_farm.records.reads import FastRecordsResource, RecordReads
from buildbot_farm.records.store import RecordStore
from buildbot_farm.secret_values import is_pem
from buildbot_farm.thread_pool import in_thread
from buildbot_farm.web import FarmRoot, OpenAPIResource

if TYPE_CHECKING:
    from buildbot_farm.artifacts.repository import Repository
    from buildbot_farm.context import FarmContext

# Where the public key goes when the signing key is PEM text (a secret), in the basedir.
PUBLIC_KEY_FILE = "records-signing-key.pub"


class RecordsHost:
    """Serves the records API of one farm, following its reconfigurations.

    ``resource`` (mount it as ``builds``) and ``openapi`` (as ``openapi.json``) exist from
    the start; :meth:`configure` applies a :class:`BuildRecords` (keys, signing key, port).
    The farm gives the database (each request reads it anew), the master's clock, basedir
    (for key files) and URL (the default builder id). ``repository`` is the farm's artifact
    repository, whose index gives the digests of posted binary URLs inside it.
    """

    def __init__(
        self,
        farm: FarmContext,
        repository: Callable[[], Repository | None] = lambda: None,
    ) -> None:
        self._farm = farm
        self.settings = BuildRecords()
        self.signer: Signer | None = None
        self._builder_id = ""
        self._listening: Any = None
        self._store: RecordStore | None = None
        reads = RecordReads()
        api = RecordsResource(RecordsAPI(
            store=self.store,
            settings=lambda: self.settings,
            signer=lambda: self.signer,
            now=self._now,
            builder_id=lambda: self._builder_id,
            repository=repository,
            reads=reads,
        ))
        # Single records kept (or, on SQLite, read) are answered before the API's routing.
        self.resource = FastRecordsResource(api, reads, self.store, self._now)
        self.openapi = OpenAPIResource(OPENAPI)
        self.chain = RecordChainResource(self.store)

    def _now(self) -> float:
        return float(self._farm.master.reactor.seconds())

    def store(self) -> RecordStore | None:
        """The record store on the service's current database, or None when it is closed.

        The same store serves every request on one database, so their lookups can share
        queries.
        """
        database = self._farm.database
        if database is None:
            return None
        if self._store is None or not self._store.uses(database):
            self._store = RecordStore(database)
        return self._store

    async def configure(self, settings: BuildRecords | None) -> None:
        """Apply ``settings``: load (or create) the signing key, (re)listen on ``port``.

        With None (``records=`` not configured) the API serves with default settings and
        nothing is created on disk: an existing default key file is used, none is made.
        """
        create = settings is not None
        settings = settings or BuildRecords()
        master = self._farm.master
        reactor = master.reactor
        # Generating and writing a key file blocks: not on the reactor.
        signer = await in_thread(
            reactor, self._load_signer, settings.signing_key, Path(master.basedir), create
        )
        previous, self.settings = self.settings, settings
        self._builder_id = settings.builder_id or master.config.buildbotURL
        self.signer = signer
        if self._listening is not None and previous.port != settings.port:
            await self.stop()
        if settings.port and self._listening is None:
            root = FarmRoot()
            root.mount("builds", self.resource, openapi="openapi.json")
            root.mount("build", BuildAlias(self.resource))
            root.mount("openapi.json", self.openapi)
            root.mount("records-chain", self.chain)
            site = server.Site(root)
            site.displayTracebacks = False
            endpoint = endpoints.serverFromString(reactor, settings.port)
            self._listening = await endpoint.listen(site)
            log.msg(f"farm records: API also on {settings.port}")

    def sign(self, record: BuildRecord) -> bytes | None:
        """``record``'s provenance envelope, to store with it; None with no signing key, or
        for a record that names no digest (it has nothing to attest)."""
        if self.signer is None:
            return None
        try:
            return signed_provenance(self.signer, record, self._builder_id)
        except NothingToAttest:
            return None

    @staticmethod
    def _load_signer(signing_key: str, basedir: Path, create: bool) -> Signer | None:
        """The signer of ``signing_key`` (a path, or PEM text from a secret), or None.

        A key file that cannot be used leaves provenance unsigned (logged); PEM text that
        is not an Ed25519 key is a configuration error. The public key goes next to the
        key file, or to ``PUBLIC_KEY_FILE`` in the basedir for PEM text. A missing key
        file is made only with ``create``.
        """
        if is_pem(signing_key):
            try:
                signer = Signer.from_pem(signing_key.encode())
            except ValueError as e:
                raise config.ConfigErrors(
                    [f"FarmService: BuildRecords: signing_key: the PEM text {e}"]
                ) from e
            public = basedir / PUBLIC_KEY_FILE
            where = "PEM text"
        else:
            key_path = basedir / signing_key
            if not create and not key_path.exists():
                return None
            try:
                signer = Signer.from_file(key_path, create=create)
            except (OSError, ValueError) as e:
                log.msg(f"farm records: no provenance signing: cannot use {key_path}: {e}")
                return None
            public = key_path.with_name(key_path.name + ".pub")
            where = str(key_path)
        if not public.exists() or public.read_bytes() != signer.public_pem():
            public.write_bytes(signer.public_pem())
        log.msg(f"farm records: provenance signed with the key of {where}"
                f" (key id {signer.key_id[:16]}, public key {public})")
        return signer

    async def stop(self) -> None:
        """Stop listening on the API's own port, if it has one."""
        if self._listening is not None:
            listening, self._listening = self._listening, None
            await listening.stopListening()
