"""The records API as FarmService runs it: its resource, signing key and optional own port."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from twisted.internet import endpoints
from twisted.python import log
from twisted.web import server

from buildbot_farm import db
from buildbot_farm.records.api import RecordsResource
from buildbot_farm.records.config import BuildRecords
from buildbot_farm.records.openapi import OPENAPI
from buildbot_farm.records.provenance import Signer
from buildbot_farm.records.store import RecordStore
from buildbot_farm.web import FarmRoot
from buildbot_farm.web.status import OpenAPIResource


class RecordsEndpoint:
    """Serves the records API of one farm service, following its reconfigurations.

    ``resource`` (mount it as ``builds``) and ``openapi`` (as ``openapi.json``) exist from
    the start; :meth:`configure` applies a :class:`BuildRecords` (keys, signing key, port).
    """

    def __init__(self, database: Callable[[], db.Database | None]) -> None:
        self._database = database
        self.settings = BuildRecords()
        self.signer: Signer | None = None
        self._reactor: Any = None
        self._builder_id = ""
        self._listening: Any = None
        self._store: RecordStore | None = None
        self.resource = RecordsResource(
            store=self.store,
            settings=lambda: self.settings,
            signer=lambda: self.signer,
            now=lambda: float(self._reactor.seconds()),
            builder_id=lambda: self._builder_id,
        )
        self.openapi = OpenAPIResource(OPENAPI)

    def store(self) -> RecordStore | None:
        """The record store on the service's current database, or None when it is closed.

        The same store serves every request on one database, so their lookups can share
        queries.
        """
        database = self._database()
        if database is None:
            return None
        if self._store is None or not self._store.uses(database):
            self._store = RecordStore(database)
        return self._store

    async def configure(
        self, settings: BuildRecords, reactor: Any, basedir: str, buildbot_url: str
    ) -> None:
        """Apply ``settings``: load (or create) the signing key, (re)listen on ``port``."""
        previous, self.settings, self._reactor = self.settings, settings, reactor
        self._builder_id = settings.builder_id or buildbot_url
        key_path = Path(basedir, settings.signing_key)
        try:
            self.signer = Signer.from_file(key_path, create=True)
        except (OSError, ValueError) as e:
            self.signer = None
            log.msg(f"farm records: no provenance signing: cannot use {key_path}: {e}")
        else:
            public = key_path.with_name(key_path.name + ".pub")
            if not public.exists():
                public.write_bytes(self.signer.public_pem())
            log.msg(f"farm records: provenance signed with {key_path} (public key {public})")
        if self._listening is not None and previous.port != settings.port:
            await self.stop()
        if settings.port and self._listening is None:
            root = FarmRoot()
            root.mount("builds", self.resource, openapi="openapi.json")
            root.mount("openapi.json", self.openapi)
            site = server.Site(root)
            site.displayTracebacks = False
            endpoint = endpoints.serverFromString(reactor, settings.port)
            self._listening = await endpoint.listen(site)
            log.msg(f"farm records: API also on {settings.port}")

    async def stop(self) -> None:
        """Stop listening on the API's own port, if it has one."""
        if self._listening is not None:
            listening, self._listening = self._listening, None
            await listening.stopListening()
