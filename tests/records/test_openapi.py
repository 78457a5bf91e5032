"""Schemathesis against the records API's OpenAPI document, on a real server."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.records.server import ADMIN_KEY

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a records API served by a subprocess on a fresh SQLite database."""
    base = tmp_path_factory.mktemp("schema")
    port_file = base / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.records.server", f"sqlite:///{base}/farm.sqlite",
         str(port_file)],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        assert process.poll() is None, "the records server exited"
        assert time.monotonic() < deadline, "the records server did not start within 30 s"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port_file.read_text()}/plugins/farm/api"
    process.terminate()
    process.wait(10)


def test_the_api_matches_its_openapi_document(api_url: str) -> None:
    """No generated request makes a server error, and every response matches the document."""
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    assert len(operations) == 8
    for operation in operations:

        @hypothesis.settings(
            max_examples=40, deadline=None, database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                        response_schema_conformance],
            )

        check()
