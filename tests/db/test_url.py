"""Parsing of db_url strings (pure logic, no database)."""

from __future__ import annotations

import pytest

from buildbot_farm.db import InvalidDatabaseURL, parse_db_url


def test_relative_sqlite_path_is_anchored_at_the_basedir() -> None:
    """A relative SQLite path is resolved against the master's basedir."""
    url = parse_db_url("sqlite:///farm.sqlite").relative_to("/srv/master")
    assert (url.backend, url.path) == ("sqlite", "/srv/master/farm.sqlite")


def test_absolute_sqlite_path_is_kept() -> None:
    """Four slashes mean an absolute path, which the basedir does not change."""
    url = parse_db_url("sqlite:////var/lib/farm.sqlite").relative_to("/srv/master")
    assert url.path == "/var/lib/farm.sqlite"


@pytest.mark.parametrize("text", ["sqlite://", "sqlite:///:memory:"])
def test_memory_sqlite(text: str) -> None:
    """Both spellings of an in-memory SQLite database are understood."""
    assert parse_db_url(text).path == ":memory:"


@pytest.mark.parametrize("text", ["postgresql://u:pw@127.0.0.1:5432/farm", "postgres://u@h/farm"])
def test_postgres_urls_become_libpq_dsns(text: str) -> None:
    """postgres:// and postgresql:// both give a postgresql:// DSN."""
    url = parse_db_url(text)
    assert url.backend == "postgresql"
    assert url.dsn.startswith("postgresql://")


def test_password_is_redacted_in_messages() -> None:
    """Messages never show a password, neither in the userinfo nor in a query option."""
    assert parse_db_url("postgresql://u:s3cret@h:5432/db").redacted() == "postgresql://u:***@h:5432/db"
    assert "s3cret" not in parse_db_url("postgresql://h/db?password=s3cret").redacted()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("mysql://h/db", "unknown scheme 'mysql'"),
        ("farm.sqlite", "has no scheme"),
        ("", "non-empty string"),
        ("sqlite://host/farm.sqlite", "names a host"),
        ("sqlite:///dir/", "names a directory"),
        ("postgresql:///db", "needs a host"),
        ("postgresql://h:notaport/db", "is malformed"),
    ],
)
def test_bad_urls_say_what_is_wrong(text: str, says: str) -> None:
    """Each malformed db_url is refused with a message naming the problem."""
    with pytest.raises(InvalidDatabaseURL, match=says):
        parse_db_url(text)


def test_non_string_is_refused() -> None:
    """A db_url that is not a string is refused, not crashed on."""
    with pytest.raises(InvalidDatabaseURL, match="non-empty string"):
        parse_db_url(None)
