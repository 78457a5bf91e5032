"""Every farm API's OpenAPI document: valid OpenAPI 3, and its paths are its API's routes."""

from __future__ import annotations

from typing import Any

import pytest
import treq
from openapi_spec_validator import validate
from treq.testing import StubTreq
from twisted.web import resource
from twisted.web.resource import IResource

from buildbot_farm.api_documents import DOCUMENTS, farm_documents
from buildbot_farm.leases.api import CoordinatorAPI
from buildbot_farm.ondemand.api import OnDemandAPI
from buildbot_farm.records.api import RecordsAPI
from buildbot_farm.records.chain_api import RecordChainAPI
from buildbot_farm.web import Routes
from buildbot_farm.web.status import StatusAPI
from tests.harness.stub_http import stub_request

# The routes behind each document.
ROUTED: dict[str, list[Routes[Any]]] = {
    "status": [StatusAPI.routes],
    "ondemand": [OnDemandAPI.routes],
    "coordinator": [CoordinatorAPI.routes],
    "records": [RecordsAPI.routes, RecordChainAPI.routes],
}
# Operations a document describes that no Routes table serves: the index is FarmRoot's,
# /build/{name} is BuildAlias handing /builds/{name} over.
NOT_ROUTED = {("status", "get", "/"), ("records", "get", "/build/{name}")}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(method, path) of each operation of ``document``."""
    return {(method, path) for path, item in document["paths"].items()
            for method in item if method in METHODS}


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_the_document_is_valid_openapi(name: str) -> None:
    """openapi-spec-validator accepts the document, and it declares the one error shape."""
    document = DOCUMENTS[name]
    validate(document)
    error = document["components"]["schemas"]["Error"]
    assert set(error["properties"]) == {"error", "fields"}


@pytest.mark.parametrize("name", sorted(ROUTED))
def test_the_documented_operations_are_the_routes(name: str) -> None:
    """Each route is documented, and each documented operation is routed."""
    routed = {(route.method.lower(), "/" + "/".join(route.pattern))
              for routes in ROUTED[name] for route in routes.table}
    documented = {(method, path) for method, path in operations(DOCUMENTS[name])
                  if (name, method, path) not in NOT_ROUTED}
    assert routed == documented


def _get(path: str) -> tuple[int, Any]:
    """GET ``path`` from the documents resource mounted as ``openapi``: (status, JSON)."""
    root = resource.Resource()
    root.putChild(b"openapi", IResource(farm_documents()))
    stub = StubTreq(root)
    done: list[tuple[int, Any]] = []
    stub_request(stub, "GET", f"http://farm/openapi{path}").addCallback(
        lambda response: treq.json_content(response).addCallback(
            lambda body: done.append((response.code, body))))
    stub.flush()
    return done[0]


def test_the_documents_are_served_at_a_stable_path() -> None:
    """``openapi/NAME.json`` is each document; ``openapi/`` lists them; others are 404."""
    assert _get("/") == (200, {"documents": sorted(f"{n}.json" for n in DOCUMENTS)})
    for name, document in DOCUMENTS.items():
        assert _get(f"/{name}.json") == (200, document)
    code, body = _get("/nothing.json")
    assert code == 404
    assert "ondemand" in body["error"]
