"""`buildbot-farm db status|migrate` run as a user runs them, on both backends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from buildbot_farm import db
from tests.db.conftest import DbUrlFactory

SCRIPT = Path(sys.executable).parent / "buildbot-farm"
NEWEST = db.load_migrations("sqlite")[-1].version


def farm_db(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``buildbot-farm db ARGS...``; its exit code and output."""
    return subprocess.run(
        [str(SCRIPT), "db", *args], capture_output=True, text=True, timeout=120, check=False
    )


def assert_no_farm_database(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2, nothing on stdout, and one stderr line saying so and how to create one."""
    assert (done.returncode, done.stdout) == (2, ""), done
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("buildbot-farm: there is no farm database at "), done.stderr
    assert "`buildbot-farm db migrate " in done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


def test_status_of_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    """status on a file that is not there says so, exits 2 and leaves the directory empty."""
    done = farm_db("status", "sqlite:///nonexist.sqlite", "--basedir", str(tmp_path))
    assert_no_farm_database(
        done, f"{tmp_path}/nonexist.sqlite: no such file",
        f"migrate sqlite:///nonexist.sqlite --basedir {tmp_path}` creates one",
    )
    assert list(tmp_path.iterdir()) == []


def test_status_of_a_file_that_is_no_farm_database_changes_nothing(tmp_path: Path) -> None:
    """status on an existing file without the farm's tables says so and leaves it as it was."""
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    done = farm_db("status", f"sqlite:///{empty}")
    assert_no_farm_database(done, "it has no farm_schema_version table", "creates its tables")
    assert [(p.name, p.stat().st_size) for p in tmp_path.iterdir()] == [("empty.sqlite", 0)]


def test_migrate_creates_and_status_then_reports_it(tmp_path: Path) -> None:
    """migrate still creates a missing SQLite file; status then lists the applied migrations."""
    url = "sqlite:///farm.sqlite"
    created = farm_db("migrate", url, "--basedir", str(tmp_path))
    assert (created.returncode, created.stdout) == (0, f"{url}: schema version {NEWEST}\n")
    assert (tmp_path / "farm.sqlite").is_file()
    status = farm_db("status", url, "--basedir", str(tmp_path))
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].startswith("0001 ")
    assert lines[-1].endswith(f": at schema version {NEWEST}; this code knows {NEWEST}")


def test_status_of_an_empty_postgresql_database_is_no_farm_database(
    db_url_for: DbUrlFactory,
) -> None:
    """On PostgreSQL a database without the farm's tables is reported the same way."""
    url = db_url_for("postgresql")
    assert_no_farm_database(farm_db("status", url), "it has no farm_schema_version table")
    assert farm_db("migrate", url).returncode == 0
    status = farm_db("status", url)
    assert status.returncode == 0, status.stderr
    assert f"at schema version {NEWEST}" in status.stdout
