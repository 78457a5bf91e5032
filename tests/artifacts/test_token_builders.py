"""Which builders get master-minted tokens: token_builders checks and factory wrapping."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from buildbot.config.errors import ConfigErrors
from buildbot.config.master import MasterConfig
from buildbot.process.build import Build
from buildbot.process.factory import BuildFactory
from buildbot.util.service import BuildbotService

from buildbot_farm.artifacts import ArtifactRepository
from buildbot_farm.artifacts.build_tokens import (
    TokenBuilderInstaller,
    TokenMintingBuild,
    install,
    opted_in,
)
from buildbot_farm.service import FarmService


class OwnBuild(Build):
    """A user's own Build subclass, which the token-minting build must keep."""


def builder(name: str, factory: BuildFactory) -> SimpleNamespace:
    """A stand-in for a BuilderConfig: what install() reads of one (name, factory)."""
    return SimpleNamespace(name=name, factory=factory)


def test_names_and_patterns_opt_builders_in() -> None:
    """An exact name or an fnmatch pattern opts a builder in; other builders stay out."""
    assert opted_in(["hello"], "hello")
    assert opted_in(["release-*"], "release-arm64")
    assert not opted_in(["hello", "release-*"], "hello-world")
    assert not opted_in([], "hello")


def test_only_opted_in_factories_get_the_token_minting_build() -> None:
    """Matching builders' factories mint tokens, keeping their own Build class; others not."""
    own, plain = BuildFactory(), BuildFactory()
    own.buildClass = OwnBuild
    builders = [builder("release-1", own), builder("docs", plain)]
    install(builders, ["release-*"])
    assert issubclass(own.buildClass, TokenMintingBuild)
    assert issubclass(own.buildClass, OwnBuild)
    assert plain.buildClass is Build
    wrapped = own.buildClass
    install(builders, ["release-*"])
    assert own.buildClass is wrapped


def test_a_pattern_naming_no_builder_is_a_config_error() -> None:
    """Each token_builders entry that matches no builder is named, and nothing is changed."""
    factory = BuildFactory()
    with pytest.raises(ConfigErrors) as raised:
        install([builder("hello", factory)], ["hello", "helo", "rel-*"])
    message = "\n".join(raised.value.errors)
    assert "'helo'" in message
    assert "'rel-*'" in message
    assert "the builders are hello" in message
    assert factory.buildClass is Build


def test_token_builders_must_be_a_list_of_names() -> None:
    """A bare string, a non-list or an empty name is reported under token_builders."""
    for bad in ("hello", [""], 7, ["ok", None]):
        problems = ArtifactRepository(token_builders=bad).problems()  # type: ignore[arg-type]
        assert any("token_builders must be a list" in p for p in problems), bad
    assert ArtifactRepository(token_builders=["hello", "rel-*"]).problems() == []


def test_the_installer_reads_the_new_configurations_farm_service() -> None:
    """On a reconfig, the installer wraps by the token_builders of the new FarmService."""
    config = MasterConfig()
    factory = BuildFactory()
    config.builders = [builder("hello", factory)]
    config.services = {"farm": FarmService(
        artifacts=ArtifactRepository(token_builders=["hello"])
    )}
    TokenBuilderInstaller().reconfigServiceWithBuildbotConfig(config)
    assert issubclass(factory.buildClass, TokenMintingBuild)
    other = BuildFactory()
    config.builders = [builder("hello", other)]
    config.services = {"farm": BuildbotService(name="farm")}
    TokenBuilderInstaller().reconfigServiceWithBuildbotConfig(config)
    assert other.buildClass is Build
