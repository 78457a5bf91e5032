"""Upload tokens the master mints when a build starts, for the builders that opt in.

``util.ArtifactRepository(token_builders=["hello", "release-*"])`` opts builders in by name
or ``fnmatch`` pattern. Their builds get ``FARM_ARTIFACT_TOKEN`` (environment only, hidden in
logs), ``FARM_ARTIFACT_USER`` and ``FARM_ARTIFACT_URL`` (environment and properties) before
their first step runs, and the token is revoked before the build is reported finished.

How it hooks in, and why this way: an opted-in builder's factory gets a ``buildClass`` that
mixes in :class:`TokenMintingBuild`. ``Build.startBuild`` knows the build id and number long
before it calls ``startNextStep`` for the first step, and ``startNextStep`` may return a
Deferred, so the mixin mints there and then starts the first step: no step is added to the
build page, and nothing depends on the order of message-queue events. ``buildFinished`` is
where every build ends (success, failure, exception, cancel), so revoking there, before the
build is marked finished, means no one can see a finished build whose token still works.

The factories of each new configuration are wrapped before the BotMaster can start a build
with them: at the master's first start by FarmService's own reconfiguration (workers attach
only after the services are configured), and on every later reconfiguration by
:class:`TokenBuilderInstaller`, a small service on the master that reconfigures just before
the BotMaster.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from buildbot import config
from buildbot.process import buildstep
from buildbot.process.build import Build
from buildbot.process.results import FAILURE
from buildbot.util import service
from twisted.internet import defer
from twisted.python import log

from buildbot_farm.artifacts import tokens
from buildbot_farm.artifacts.config import ArtifactRepository
from buildbot_farm.artifacts.paths import Segments, UnsafePath
from buildbot_farm.artifacts.repository import Repository
from buildbot_farm.compat.buildbot_api import run_first
from buildbot_farm.config_checks import Configuration, suggestion
from buildbot_farm.lookup import IFarmService, farm_service
from buildbot_farm.names import FARM_SERVICE

TOKEN_KIND = "bin"
TOKEN_SOURCE = "FarmService"
INSTALLER_NAME = "farm-token-builders"
# The BotMaster reconfigures at priority 1001; the installer must go first.
INSTALLER_PRIORITY = 1002


class NoRepository(Exception):
    """The farm service runs without an artifact repository."""


def find_repository(master: Any) -> Repository:
    """The running repository of the master's farm service, or :class:`NoRepository`."""
    farm = farm_service(master)
    repository = None if farm is None else farm.artifacts.repository
    if repository is None:
        raise NoRepository(
            "no artifact repository: give util.FarmService(artifacts=util.ArtifactRepository())"
            " in master.cfg"
        )
    return repository


def opted_in(patterns: Iterable[str], builder: str) -> bool:
    """Whether ``builder`` matches one of the ``token_builders`` names or patterns."""
    return any(fnmatch.fnmatchcase(builder, pattern) for pattern in patterns)


async def grant_token(build: Any, repository: Repository, kind: str, project: str,
                      source: str) -> Segments:
    """Mint ``build``'s token and give it to the build; return the build's ``kind`` prefix.

    The token goes into the build's environment only (never a property, which the web UI
    and the database would show) and is registered as a secret, so logs show
    ``<FARM_ARTIFACT_TOKEN>`` instead. ``FARM_ARTIFACT_USER`` and ``FARM_ARTIFACT_URL`` are
    environment and properties (set by ``source``). Raises UnsafePath for a bad ``kind``.
    """
    prefix = repository.build_prefix(kind, project, build.number)
    token = await repository.mint(build.buildid, project, build.number)
    build.properties.useSecret(token, "FARM_ARTIFACT_TOKEN")
    url = repository.url_for(prefix, collection=True).rstrip("/")
    user = tokens.user_for(build.buildid)
    build.env.update(
        {"FARM_ARTIFACT_TOKEN": token, "FARM_ARTIFACT_USER": user, "FARM_ARTIFACT_URL": url}
    )
    build.setProperty("FARM_ARTIFACT_URL", url, source)
    build.setProperty("FARM_ARTIFACT_USER", user, source)
    return prefix


class TokenUnavailable(buildstep.BuildStep):
    """The step an opted-in build runs first when its token could not be minted: it fails."""

    name = "artifact-token"

    def __init__(self, reason: str, **kwargs: Any) -> None:
        kwargs.setdefault("haltOnFailure", True)
        super().__init__(**kwargs)
        self.reason = reason

    async def run(self) -> int:
        """Say why there is no token, and fail the build."""
        await self.addCompleteLog("error", f"{self.reason}\n")
        self.descriptionDone = ["no artifact token"]
        return FAILURE


class TokenMintingBuild(Build):
    """A Build that mints its artifact token before its first step and revokes it at the end.

    Mixed into the factory's own ``buildClass`` by :func:`install`. A build of a builder the
    current ``token_builders`` no longer names (a factory shared with another builder) runs
    without a token.
    """

    _steps_started = False
    _token_minted = False

    # startNextStep and buildFinished are Buildbot internals (compat.buildbot_api.BUILD_HOOKS)
    def startNextStep(self) -> defer.Deferred[Any]:  # noqa: N802
        """Before the first step: mint and publish the token. Then as Build does."""
        if self._steps_started:
            started: defer.Deferred[Any] = super().startNextStep()
            return started
        self._steps_started = True
        return defer.ensureDeferred(self._mint_then_start())

    async def _mint_then_start(self) -> None:
        problem = await self._mint()
        if problem is not None:
            log.msg(f"farm artifacts: build {self.buildid} of {self.builder.name}: {problem}")
            run_first(self, [TokenUnavailable(problem)])
        await super().startNextStep()

    async def _mint(self) -> str | None:
        """Mint and publish the token; the reason when the build must fail without one."""
        try:
            repository = find_repository(self.master)
            if not opted_in(repository.config.token_builders, self.builder.name):
                return None
            await grant_token(self, repository, TOKEN_KIND, self.builder.name, TOKEN_SOURCE)
        except (NoRepository, UnsafePath) as e:
            return f"builder {self.builder.name!r} is in token_builders, but {e}"
        except Exception as e:  # the database is down, say: the build must not run tokenless
            log.err(None, f"farm artifacts: minting build {self.buildid}'s token")
            return f"could not mint the artifact token: {e}"
        self._token_minted = True
        return None

    def buildFinished(self, text: Any, results: Any) -> defer.Deferred[None]:
        """Revoke the token, then finish as Build does (this never fails)."""
        return defer.ensureDeferred(self._revoke_then_finish(text, results))

    async def _revoke_then_finish(self, text: Any, results: Any) -> None:
        if self._token_minted and self.buildid is not None:
            try:
                await find_repository(self.master).index.revoke_build(self.buildid)
            except Exception:
                log.err(None, f"farm artifacts: could not revoke build {self.buildid}'s token;"
                        " it dies at its time-to-live")
        await super().buildFinished(text, results)


@functools.cache
def token_build_class(build_class: type[Build]) -> type[Build]:
    """``build_class`` with :class:`TokenMintingBuild` mixed in (one class per original)."""
    if issubclass(build_class, TokenMintingBuild):
        return build_class
    return type(f"TokenMinting{build_class.__name__}", (TokenMintingBuild, build_class), {})


def token_builder_problems(configuration: Configuration) -> Iterator[str]:
    """The token_builders patterns of each FarmService of master.cfg that match no builder."""
    for name, settings in configuration.farms.items():
        artifacts = settings.artifacts if settings is not None else None
        if artifacts is None or not artifacts.token_builders:
            continue
        problem = unmatched_token_builders(configuration.builder_names, artifacts.token_builders)
        if problem is not None:
            yield f"FarmService {name!r}: {problem}"


def unmatched_token_builders(names: Sequence[str], patterns: Sequence[str]) -> str | None:
    """The config error for the ``patterns`` that match none of the builder ``names``."""
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if not unmatched:
        return None
    return (
        "ArtifactRepository: no builder matches the token_builders entries "
        + ", ".join(f"{p!r}{suggestion(p, names)}" for p in unmatched)
        + f"; the builders are {', '.join(sorted(names)) or 'none'}: correct the entry, or"
        " add the builder to c['builders']"
    )


def install(builders: Sequence[Any], patterns: Sequence[str]) -> None:
    """Give the factories of the builders ``patterns`` name the token-minting build class.

    ``builders`` are the BuilderConfigs of a configuration. Raises ``ConfigErrors`` naming
    every pattern that matches no builder, before changing anything.
    """
    problem = unmatched_token_builders([builder.name for builder in builders], patterns)
    if problem is not None:
        config.error(problem, always_raise=True)
    for builder in builders:
        if opted_in(patterns, builder.name):
            builder.factory.buildClass = token_build_class(builder.factory.buildClass)


def token_builders_of(farm: object) -> Sequence[str]:
    """The ``token_builders`` a FarmService of a (new) configuration asks for; none when
    ``farm`` is not a FarmService."""
    if not IFarmService.providedBy(farm):
        return ()
    service: Any = farm  # a FarmService, which IFarmService says has requested_artifacts
    wanted = service.requested_artifacts()
    return wanted.token_builders if isinstance(wanted, ArtifactRepository) else ()


class TokenBuilderInstaller(service.ReconfigurableServiceMixin, service.AsyncService):
    """Wraps each new configuration's opted-in factories before the BotMaster uses them."""

    name = INSTALLER_NAME
    reconfig_priority = INSTALLER_PRIORITY

    def reconfigServiceWithBuildbotConfig(  # noqa: N802
        self, new_config: Any
    ) -> defer.Deferred[None]:
        """Install the token-minting build class for ``new_config`` (ConfigErrors if wrong)."""
        install(new_config.builders, token_builders_of(new_config.services.get(FARM_SERVICE)))
        return defer.succeed(None)


async def install_on(master: Any, patterns: Sequence[str]) -> None:
    """Wrap the master's current factories now and keep wrapping them on each reconfig."""
    install(master.config.builders, patterns)
    if INSTALLER_NAME not in master.namedServices:
        await TokenBuilderInstaller().setServiceParent(master)

