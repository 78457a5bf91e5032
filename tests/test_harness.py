"""The test harness works for real: PostgreSQL clusters, the Docker engine and the images."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import docker
import psycopg2
import pytest

from tests.harness.images import debian_mirror
from tests.harness.postgres import PostgresCluster

_REPORT_PYTHON_AND_INTERFACES = """
import json, sys
with open("/proc/net/dev") as table:
    interfaces = sorted(line.split(":")[0].strip() for line in table.readlines()[2:])
print(json.dumps({"python": sys.version_info[0], "interfaces": interfaces}))
"""


def _run_then_check_removed(client: docker.DockerClient, image: str, command: list[str]) -> bytes:
    """Run ``command`` in a new network-less container of ``image``; return what it printed."""
    name = f"farm-harness-{uuid.uuid4().hex}"
    output: bytes = client.containers.run(
        image, command, name=name, network_mode="none", remove=True
    )
    assert client.containers.list(all=True, filters={"name": name}) == []
    return output


def _query(dsn: str, *statements: str) -> list[tuple[object, ...]]:
    """Run ``statements`` in one transaction; return the rows of the last one, if it has any."""
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


@pytest.mark.docker
def test_base_image_runs_python_with_only_loopback(
    docker_client: docker.DockerClient, base_image: str
) -> None:
    """A base-image container runs python3, sees no interface but ``lo``, and is removed."""
    command = ["python3", "-c", _REPORT_PYTHON_AND_INTERFACES]
    output = _run_then_check_removed(docker_client, base_image, command)
    assert json.loads(output) == {"python": 3, "interfaces": ["lo"]}


@pytest.mark.docker
def test_busybox_image_runs_its_shell(
    docker_client: docker.DockerClient, busybox_image: str
) -> None:
    """A busybox-image container runs ``sh -c 'echo ok'`` and is removed."""
    output = _run_then_check_removed(docker_client, busybox_image, ["sh", "-c", "echo ok"])
    assert output == b"ok\n"


@pytest.mark.postgres
def test_pg_dsn_answers_queries(pg_dsn: str) -> None:
    """The session's PostgreSQL answers ``SELECT version()`` through psycopg2."""
    [(version,)] = _query(pg_dsn, "SELECT version()")
    assert str(version).startswith("PostgreSQL ")


@pytest.mark.postgres
def test_cluster_keeps_committed_rows_across_a_crash(
    pg_cluster_factory: Callable[[], PostgresCluster],
) -> None:
    """Rows committed before ``kill()`` are back after ``restart()``, at the same DSN."""
    cluster = pg_cluster_factory()
    dsn = cluster.dsn
    _query(dsn, "CREATE TABLE survivors (name text)", "INSERT INTO survivors VALUES ('kept')")
    cluster.kill()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(dsn, connect_timeout=2)
    cluster.restart()
    assert cluster.dsn == dsn
    assert _query(dsn, "SELECT name FROM survivors") == [("kept",)]


@pytest.mark.postgres
def test_restart_of_a_running_cluster_is_clean(
    pg_cluster_factory: Callable[[], PostgresCluster],
) -> None:
    """``restart()`` on a running server drops its connections and serves again at the same DSN."""
    cluster = pg_cluster_factory()
    dsn = cluster.dsn
    survivor = psycopg2.connect(dsn)
    try:
        cluster.restart()
        with pytest.raises(psycopg2.OperationalError), survivor.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        survivor.close()
    assert _query(dsn, "SELECT 1") == [(1,)]


@pytest.mark.postgres
def test_create_database_returns_its_own_dsn(
    pg_cluster_factory: Callable[[], PostgresCluster],
) -> None:
    """``create_database`` returns a DSN that connects to the new database, name quoted."""
    dsn = pg_cluster_factory().create_database("farm test")
    assert _query(dsn, "SELECT current_database()") == [("farm test",)]


@pytest.mark.parametrize(
    ("name", "text"),
    [
        (
            "sources.list.d/debian.sources",
            "Types: deb\n# a comment\nURIs: http://security.example/debian-security\n"
            "Suites: bookworm-security\n\n"
            "Types: deb-src deb\nURIs: http://mirror.example/debian http://other.example/\n"
            "Suites: bookworm bookworm-updates\nSigned-By:\n -----BEGIN PGP-----\n .\n",
        ),
        (
            "sources.list",
            "# deb http://old.example/debian bookworm main\n"
            "deb http://security.example/debian-security bookworm-security main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n",
        ),
    ],
)
def test_debian_mirror_reads_both_apt_source_formats(tmp_path: Path, name: str, text: str) -> None:
    """``debian_mirror`` finds the bookworm source in deb822 and in one-line apt files."""
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / name).write_text(text)
    assert debian_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
