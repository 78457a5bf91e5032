"""Schemathesis over every documented operation of every farm API, on one real master.

Each API's OpenAPI document is read from the master (``/plugins/farm/openapi/NAME.json``)
and schemathesis generates requests from it: none may answer a 500, nor a 5xx its document
does not declare (on-demand ``compat`` declares 502 "the build failed" and 504 "not built
in time": what it says about a real build), and every JSON answer must be strict JSON
(UTF-8, no NaN/Infinity, no lone surrogates), errors in the one shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from buildbot_farm.api_documents import DOCUMENTS
from buildbot_farm.demo import LocalFarm
from tests.harness.ports import free_port
from tests.test_bad_input import ADMIN_KEY, MASTER_CFG, basic, bearer, strict_json

pytestmark = pytest.mark.master
# Generated requests per operation: 25 operations in all keep the run near 20 s.
EXAMPLES = 16
AUTH = {"records": bearer(ADMIN_KEY), "coordinator": basic("user-fuzz")}


@pytest.fixture(scope="module")
def web_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The web URL of a running master whose farm service has every capability."""
    base = tmp_path_factory.mktemp("fuzz")
    config = base / "master.cfg"
    config.write_text(MASTER_CFG)
    local = LocalFarm(config, base / "farm", env={
        "FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port()),
    })
    local.create()
    try:
        local.start()
        yield local.web_url.rstrip("/")
    finally:
        local.stop()


def _header(response: Any, name: str) -> str:
    values = response.headers.get(name) or response.headers.get(name.title()) or [""]
    return str(values[0] if isinstance(values, list) else values)


def check_answer(response: Any, declared: set[str]) -> None:
    """No 500, no undeclared 5xx; JSON is strict; an error is ``{"error", "fields"?}``.

    ``declared`` are the statuses the operation's document gives.
    """
    code = response.status_code
    assert code < 500 or (code != 500 and str(code) in declared), (code, response.content[:300])
    if not _header(response, "content-type").startswith("application/json"):
        assert code < 400, (code, response.content[:300])
        return
    value = strict_json(response.content)
    if code >= 400:
        assert isinstance(value.get("error"), str), value
        assert value["error"], value
        assert isinstance(value.get("fields", {}), dict), value


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_no_generated_request_gets_a_server_error(web_url: str, name: str) -> None:
    """Every operation of the document ``name``, with generated inputs: only 2xx-4xx, as JSON."""
    schema = schemathesis.openapi.from_url(f"{web_url}/plugins/farm/openapi/{name}.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert operations
    for operation in operations:
        _fuzz(operation, AUTH.get(name, {}))


def _fuzz(operation: Any, headers: dict[str, str]) -> None:
    """Generated requests to one ``operation``, valid ones and ones that break its schema
    (wrong types, missing or extra fields), each answer checked by :func:`check_answer`."""
    declared = set(operation.definition.raw.get("responses", {}))

    @hypothesis.settings(
        max_examples=EXAMPLES, deadline=None, database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    ))
    def check(case: schemathesis.Case) -> None:
        check_answer(case.call(headers=headers, timeout=30), declared)

    check()


def test_every_document_is_served_as_the_package_has_it(web_url: str) -> None:
    """The master serves each document unchanged, and lists them all."""
    import urllib.request

    with urllib.request.urlopen(f"{web_url}/plugins/farm/openapi/") as answer:
        listed = json.loads(answer.read())["documents"]
    assert listed == sorted(f"{name}.json" for name in DOCUMENTS)
