"""Parsing of ``db_url`` strings: which backend, and where its data lives.

Pure logic: no Twisted, no Buildbot, no I/O.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from buildbot_farm.db._errors import InvalidDatabaseURL

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

_POSTGRES_SCHEMES = ("postgresql", "postgres")
MEMORY = ":memory:"


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed ``db_url``.

    ``backend`` is ``"sqlite"`` or ``"postgresql"``. For SQLite, ``path`` is the database
    file (absolute once :meth:`relative_to` has been applied) or ``":memory:"``; for
    PostgreSQL, ``dsn`` is the libpq connection URL as given.
    """

    backend: str
    text: str
    path: str = ""
    dsn: str = ""

    def relative_to(self, basedir: str) -> DatabaseURL:
        """Return this URL with a relative SQLite path anchored at ``basedir`` (the master's)."""
        if self.backend != SQLITE or self.path == MEMORY or os.path.isabs(self.path):
            return self
        path = os.path.join(basedir, self.path)
        return DatabaseURL(backend=SQLITE, text=f"sqlite:///{path}", path=path)

    def redacted(self) -> str:
        """The URL with any password replaced by ``***``, for messages and logs."""
        if self.backend != POSTGRESQL:
            return self.text
        parts = urlsplit(self.dsn)
        if parts.password is None:
            return _without_password_param(self.dsn)
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        redacted = parts._replace(netloc=f"{user}:***@{hostinfo}")
        return _without_password_param(urlunsplit(redacted))


def _without_password_param(url: str) -> str:
    return re.sub(r"(password=)[^&]*", r"\1***", url)


def parse_db_url(url: object) -> DatabaseURL:
    """Parse a ``db_url`` of the form the farm accepts, or raise :class:`InvalidDatabaseURL`.

    Accepted forms: ``sqlite:///relative/path.sqlite`` (relative to the master's basedir),
    ``sqlite:////absolute/path.sqlite``, ``sqlite://`` or ``sqlite:///:memory:`` (memory), and
    ``postgresql://user:password@host:port/dbname?options`` (``postgres://`` too).
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidDatabaseURL(
            f"db_url must be a non-empty string such as 'sqlite:///farm.sqlite' "
            f"or 'postgresql://user@host/db', not {url!r}"
        )
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidDatabaseURL(
            f"db_url {url!r} has no scheme; write 'sqlite:///farm.sqlite' or 'postgresql://...'"
        )
    scheme = scheme.lower()
    if scheme == SQLITE:
        return _parse_sqlite(url, rest)
    if scheme in _POSTGRES_SCHEMES:
        return _parse_postgres(url)
    raise InvalidDatabaseURL(
        f"db_url {url!r} has the unknown scheme {scheme!r}; "
        f"the farm database is 'sqlite' or 'postgresql'"
    )


def _parse_sqlite(url: str, rest: str) -> DatabaseURL:
    if rest in ("", "/", "/" + MEMORY):
        return DatabaseURL(backend=SQLITE, text=url, path=MEMORY)
    if not rest.startswith("/"):
        raise InvalidDatabaseURL(
            f"db_url {url!r} names a host, and SQLite URLs have none: write "
            f"'sqlite:///relative.sqlite' or 'sqlite:////absolute/path.sqlite'"
        )
    path = rest[1:]
    if "?" in path:
        raise InvalidDatabaseURL(f"db_url {url!r}: SQLite URLs take no query options")
    if path.endswith("/"):
        raise InvalidDatabaseURL(f"db_url {url!r} names a directory, not a database file")
    return DatabaseURL(backend=SQLITE, text=url, path=path)


def _parse_postgres(url: str) -> DatabaseURL:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        shown = _without_password_param(url)
        raise InvalidDatabaseURL(f"db_url {shown!r} is malformed: {e}") from e
    if not parts.hostname and "host=" not in parts.query:
        raise InvalidDatabaseURL(
            "db_url for PostgreSQL needs a host, as in 'postgresql://user@127.0.0.1:5432/farm'"
        )
    if port == 0:
        raise InvalidDatabaseURL("db_url for PostgreSQL has port 0; give the server's port")
    dsn = "postgresql" + url[url.index("://") :]
    return DatabaseURL(backend=POSTGRESQL, text=url, dsn=dsn)
