"""The farm database fixtures of tests/db, on both backends."""

from __future__ import annotations

from tests.db.conftest import backend, database, db_url_for

__all__ = ["backend", "database", "db_url_for"]
