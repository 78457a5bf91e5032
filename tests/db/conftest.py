"""Fixtures that give each test a fresh, migrated farm database on each backend."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import psycopg2
import pytest
import pytest_twisted

from buildbot_farm import db
from tests.harness.twisted_reactor import reactor


def schema_dsn(server_dsn: str, schema: str) -> str:
    """A DSN for ``server_dsn`` whose connections see only ``schema`` (created here)."""
    with psycopg2.connect(server_dsn) as connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in server_dsn else "?"
    return f"{server_dsn}{separator}options={quote(f'-csearch_path={schema}')}"


DbUrlFactory = Callable[[str], str]


@pytest.fixture
def db_url_for(request: pytest.FixtureRequest, tmp_path: Path) -> DbUrlFactory:
    """A factory: backend name -> the URL of a fresh, empty database on that backend.

    PostgreSQL (and so the ``pg_dsn`` server) is only asked for when a test uses it.
    """

    def make(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'farm-{uuid.uuid4().hex[:8]}.sqlite'}"
        pg_dsn = request.getfixturevalue("pg_dsn")
        return schema_dsn(pg_dsn, f"t_{uuid.uuid4().hex[:12]}")

    return make


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each test that asks for it runs once per backend."""
    return str(request.param)


@pytest_twisted.async_yield_fixture
async def database(backend: str, db_url_for: DbUrlFactory) -> AsyncIterator[db.Database]:
    """A started, migrated farm database on the backend under test."""
    database = await db.connect(db_url_for(backend), reactor, pool_size=4, timeout=10.0)
    yield database
    await database.stop()
