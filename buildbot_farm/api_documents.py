"""The OpenAPI documents of every farm API, served at ``/plugins/farm/openapi/NAME.json``.

Each capability keeps its document beside its API (``CAPABILITY/openapi.py``); this module
only names them. ``tests/test_openapi_documents.py`` validates each one and checks that its
paths are the routes of its API.
"""

from __future__ import annotations

from typing import Any

from buildbot_farm.artifacts.openapi import OPENAPI as ARTIFACTS
from buildbot_farm.leases.openapi import OPENAPI as COORDINATOR
from buildbot_farm.ondemand.openapi import OPENAPI as ONDEMAND
from buildbot_farm.records.openapi import OPENAPI as RECORDS
from buildbot_farm.web import OpenAPIDocuments
from buildbot_farm.web.status import OPENAPI as STATUS

DOCUMENTS: dict[str, dict[str, Any]] = {
    "status": STATUS,
    "records": RECORDS,
    "ondemand": ONDEMAND,
    "coordinator": COORDINATOR,
    "artifacts": ARTIFACTS,
}


def farm_documents() -> OpenAPIDocuments:
    """The resource serving :data:`DOCUMENTS` (mount it as ``openapi``)."""
    documents = OpenAPIDocuments()
    for name, document in DOCUMENTS.items():
        documents.add(name, document)
    return documents
