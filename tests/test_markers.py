"""The ``postgres`` marker reaches every test that talks to PostgreSQL, and only those."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def collected(*args: str) -> set[str]:
    """The ids pytest collects with ``args`` (no test runs)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *args],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {line for line in done.stdout.splitlines() if "::" in line}


def test_backend_parametrised_tests_are_marked_by_their_backend() -> None:
    """``-m postgres`` selects the postgresql variants of backend-parametrised tests and the
    tests using the server's fixtures; ``-m "not postgres"`` selects the rest."""
    everything = collected("tests/db/test_database.py", "tests/db/test_migrations.py")
    postgres = collected("-m", "postgres", "tests/db/test_database.py",
                         "tests/db/test_migrations.py")
    others = collected("-m", "not postgres", "tests/db/test_database.py",
                       "tests/db/test_migrations.py")
    assert postgres
    assert others
    assert postgres | others == everything
    assert not postgres & others
    assert {t for t in everything if t.endswith("[postgresql]")} <= postgres
    assert not {t for t in postgres if t.endswith("[sqlite]")}
