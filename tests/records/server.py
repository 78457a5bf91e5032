"""A records API alone on a loopback port: ``python -m tests.records.server DB_URL PORT_FILE``.

It serves ``/plugins/farm/api/builds`` (and its alias ``build``) and
``/plugins/farm/api/openapi.json`` as a master does, with the API key ``KEY`` (admin
``ADMIN_KEY``), and writes its port to PORT_FILE.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.web import resource, server
from twisted.web.resource import IResource

from buildbot_farm import db
from buildbot_farm.records.api import BuildAlias
from buildbot_farm.records.config import BuildRecords
from buildbot_farm.web import FarmRoot
from tests.records.farm import records_host

KEY = "schema-test-key-0123"
ADMIN_KEY = "schema-test-admin-0123"


async def serve(reactor: Any, db_url: str, port_file: str) -> None:
    """Open the database, listen, write the port, and serve until killed."""
    database = await db.connect(db_url, reactor)
    endpoint, _farm = records_host(database, reactor, tempfile.mkdtemp(), "http://bench/")
    settings = BuildRecords(api_keys={"ci": KEY}, admin_keys={"ops": ADMIN_KEY})
    await endpoint.configure(settings)
    api = FarmRoot()
    api.mount("builds", endpoint.resource)
    api.mount("build", BuildAlias(endpoint.resource))
    api.mount("openapi.json", endpoint.openapi)
    api.mount("records-chain", endpoint.chain)
    root = resource.Resource()
    plugins, farm = resource.Resource(), resource.Resource()
    root.putChild(b"plugins", IResource(plugins))
    plugins.putChild(b"farm", IResource(farm))
    farm.putChild(b"api", IResource(api))
    site = server.Site(root)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=1024)
    Path(port_file).write_text(str(port.getHost().port))
    await defer.Deferred()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(serve(reactor, sys.argv[1], sys.argv[2])))
