"""The errors the farm database raises, the same for every backend."""

from __future__ import annotations


class DatabaseError(Exception):
    """Base class of every error the farm database raises on purpose."""


class InvalidDatabaseURL(DatabaseError, ValueError):
    """A ``db_url`` that names no backend this plugin has, or is malformed."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached now; the call did nothing and may be retried later."""


class NoDatabase(DatabaseError):
    """There is no database where the URL points, and the caller asked not to create one."""


class SchemaTooNew(DatabaseError):
    """The database was migrated by a newer buildbot_farm than the one running."""


class UnstorableValue(DatabaseError, ValueError):
    """A value the database cannot hold (on PostgreSQL, text with a NUL character); the
    statement was not sent."""


class IntegrityError(DatabaseError):
    """A statement broke a constraint: a unique key, a foreign key, a check or a trigger."""
