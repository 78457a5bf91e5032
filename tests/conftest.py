"""Fixtures shared by the tests: real PostgreSQL servers and a real Docker engine.

A fixture that cannot get its service fails the test with what is missing and how to get it;
nothing is skipped. Environment variables:

* ``FARM_TEST_PG_DSN``: use this PostgreSQL server for ``pg_dsn`` instead of a throwaway one.
* ``FARM_TEST_DOCKER_ROOT``: if no engine answers there, start the tests' own dockerd with its
  socket and data under this directory, beside any system engine.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TypeVar

import docker
import pytest

from tests.harness.docker_engine import DockerEngine, DockerUnavailable
from tests.harness.images import ImageBuildError, ensure_base_image, ensure_busybox_image
from tests.harness.postgres import PostgresCluster, PostgresUnavailable

_T = TypeVar("_T")


def _needed(what: str, get: Callable[[], _T]) -> _T:
    """Return ``get()``, or fail the test saying which service is missing, why, and what to do."""
    try:
        return get()
    except (DockerUnavailable, ImageBuildError, PostgresUnavailable) as error:
        reason = str(error)
    pytest.fail(f"these tests need {what}: {reason}", pytrace=False)


def _started_cluster() -> PostgresCluster:
    """Start a PostgresCluster in a new temporary directory, or fail the test saying why."""
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="farm-pg-")))
    try:
        _needed("a PostgreSQL server", cluster.start)
    except pytest.fail.Exception:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a PostgreSQL server: ``FARM_TEST_PG_DSN`` if set, else a cluster for the session."""
    configured = os.environ.get("FARM_TEST_PG_DSN")
    if configured:
        yield configured
        return
    cluster = _started_cluster()
    yield cluster.dsn
    cluster.stop()


@pytest.fixture
def pg_cluster_factory() -> Iterator[Callable[[], PostgresCluster]]:
    """Make fresh, private, started clusters for tests that kill or restart the server."""
    with ExitStack() as stack:

        def make() -> PostgresCluster:
            cluster = _started_cluster()
            stack.callback(cluster.stop)
            return cluster

        yield make


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """The Docker engine: the running one, or a dockerd started for the session, stopped after."""
    state_dir = os.environ.get("FARM_TEST_DOCKER_ROOT")
    engine = DockerEngine(Path(state_dir) if state_dir else None)
    _needed("a Docker engine", engine.ensure)
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def docker_client(docker_engine: DockerEngine) -> Iterator[docker.DockerClient]:
    """A client of ``docker_engine``."""
    client = docker_engine.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: docker.DockerClient) -> str:
    """Tag of the Debian test base image (python3 inside), built here on first use."""
    return _needed("the test base image", lambda: ensure_base_image(docker_client))


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> str:
    """Tag of the tiny busybox-only test image, built here on first use."""
    return _needed("the busybox test image", lambda: ensure_busybox_image(docker_client))


#: The fixtures that reach a PostgreSQL server.
POSTGRES_FIXTURES = ("pg_dsn", "pg_cluster_factory")


def needs_postgres(item: pytest.Item) -> bool:
    """Whether the test ``item`` talks to PostgreSQL: it uses a PostgreSQL fixture, or it
    is the ``postgresql`` variant of a test parametrised over the ``backend`` fixture."""
    if any(name in getattr(item, "fixturenames", ()) for name in POSTGRES_FIXTURES):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("backend") == "postgresql"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs PostgreSQL ``postgres`` (``-m "not postgres"`` leaves them
    out), also those that get the server only through the ``backend`` parameter."""
    for item in items:
        if needs_postgres(item) and item.get_closest_marker("postgres") is None:
            item.add_marker(pytest.mark.postgres)
