"""Secret settings: literals checked at checkconfig, renderables rendered and checked later."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from buildbot.config import ConfigErrors
from buildbot.process.properties import Interpolate, Secret

from buildbot_farm.leases.config import FarmCoordinator
from buildbot_farm.records.config import BuildRecords
from buildbot_farm.secret_values import SecretRenderer, is_pem, literal_problem, source_of
from buildbot_farm.service import FarmSettings

VALUES = {"good": "  a-long-enough-secret-value\n", "short": "abc", "number": 7}


async def render(value: Any) -> Any:
    """Render like Buildbot's secrets: KeyError for an unknown name."""
    return VALUES[value.secret_name]


def test_a_literal_is_checked_and_a_renderable_waits() -> None:
    """A short literal is a problem naming the argument; a renderable is no problem yet."""
    assert literal_problem("short", "X: key", 16) == (
        "X: key must be a string of at least 16 characters, or a secret such as"
        " util.Secret(\"name\") rendered with c['secretsProviders']")
    assert literal_problem("a" * 16, "X: key", 16) is None
    assert literal_problem(Secret("s"), "X: key", 16) is None
    assert FarmCoordinator(secret=Secret("s")).problems() == []
    assert BuildRecords(api_keys={"ci": Secret("s")}, signing_key=Secret("k")).problems() == []
    assert BuildRecords(api_keys={"ci": "short"}).problems() == [
        "BuildRecords: api_keys['ci'] must be a string of at least 16 characters, or a secret"
        " such as util.Secret(\"name\") rendered with c['secretsProviders']"]


def test_messages_name_secrets_never_literal_parts() -> None:
    """An Interpolate is described by the secrets it names, not by its text."""
    assert source_of(Secret("farm-key")) == 'util.Secret("farm-key")'
    described = source_of(Interpolate("postgresql://u:%(secret:db-pw)s@h/%(prop:x)s"))
    assert described == 'util.Interpolate(...) of secret "db-pw"'
    assert "postgresql" not in described
    assert is_pem("-----BEGIN PRIVATE KEY-----\n...")
    assert not is_pem("records-signing-key.pem")


@pytest_twisted.ensureDeferred
async def test_the_renderer_strips_checks_and_collects_every_failure() -> None:
    """Good values come back stripped; unknown, short and non-text ones are each reported."""
    secrets = SecretRenderer(render)
    assert await secrets.text(Secret("good"), "A", 16) == "a-long-enough-secret-value"
    assert await secrets.text("literal", "B", 16) == "literal"
    missing = Secret("missing")
    assert await secrets.text(missing, "C") is missing
    await secrets.text(Secret("short"), "D", 16)
    await secrets.text(Secret("number"), "E")
    assert secrets.errors == [
        "C: util.Secret(\"missing\") cannot be rendered: missing; check c['secretsProviders']"
        " and the secret's name",
        'D: util.Secret("short") rendered to fewer than 16 characters; check the secret',
        'E: util.Secret("number") rendered to a value of type int, not a string',
    ]
    coordinator = await FarmCoordinator(secret=Secret("good")).with_secrets(secrets)
    assert coordinator.secret == "a-long-enough-secret-value"
    assert "a-long-enough" not in repr(coordinator)


@pytest_twisted.ensureDeferred
async def test_a_db_url_from_a_secret_is_rendered_and_checked_without_showing_it() -> None:
    """FarmSettings renders db_url; one that renders to a bad URL is named, not shown."""
    url = Interpolate("postgresql://farm:%(secret:farm-db-password)s@db:5432/farm")
    assert FarmSettings(db_url=url).problems() == []

    async def good(value: Any) -> Any:
        return "postgresql://farm:pa55word@db:5432/farm"

    rendered = await FarmSettings(db_url=url).with_secrets(good)
    assert rendered.db_url == "postgresql://farm:pa55word@db:5432/farm"
    assert "pa55word" not in repr(rendered)

    async def bad(value: Any) -> Any:
        return "mysql://farm:pa55word@db/farm"

    with pytest.raises(ConfigErrors) as refused:
        await FarmSettings(db_url=url).with_secrets(bad)
    assert refused.value.errors == [
        'FarmService: db_url: util.Interpolate(...) of secret "farm-db-password" rendered to a'
        " URL the farm cannot use (sqlite:///FILE or postgresql://USER:PASSWORD@HOST:PORT/DBNAME)"
    ]
