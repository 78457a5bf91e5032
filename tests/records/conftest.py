"""The records tests use the database fixtures of tests/db (a fresh database per backend)."""

from __future__ import annotations

from tests.db.conftest import backend, database, db_url_for

__all__ = ["backend", "database", "db_url_for"]
