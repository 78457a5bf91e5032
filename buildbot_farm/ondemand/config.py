"""``util.OnDemandBuilds``: the settings of on-demand builds in ``util.FarmService``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from buildbot_farm.config_checks import checked_keywords
from buildbot_farm.config_checks.values import is_positive, is_whole_at_least
from buildbot_farm.secret_values import SecretRenderer, is_renderable

OFF = (
    "on-demand builds are off: give util.FarmService(on_demand=util.OnDemandBuilds())"
    " in c['services']"
)


@checked_keywords("util.OnDemandBuilds")
@dataclass(frozen=True)
class OnDemandBuilds:
    """How on-demand jobs are retried and how long the compat endpoint holds a request.

    The janitor runs every ``janitor_interval`` seconds. It requeues a job whose build
    ended EXCEPTION or RETRY (a lost worker, a preempted host), or whose buildset Buildbot
    no longer has pending while the job heard nothing for ``stale_after`` seconds, until
    the job has had ``max_attempts`` attempts.
    ``/api/compat`` answers 504 after ``compat_timeout`` seconds. ``signing_key`` is the
    PEM Ed25519 key that signs each artifact's sha256 for ``/api/download/{key}.sig``: the
    path of its file (relative to the master's basedir, created on first start), its PEM
    text, or a secret rendered to either at (re)config (``util.Secret("name")``); None
    signs nothing.
    """

    max_attempts: int = 3
    stale_after: float = 3600.0
    janitor_interval: float = 60.0
    compat_timeout: float = 600.0
    signing_key: Any = field(default="ondemand-signing-key.pem", repr=False)

    def problems(self) -> list[str]:
        """What is wrong with these settings, each naming its argument."""
        found = []
        if not is_whole_at_least(self.max_attempts, 1):
            found.append("OnDemandBuilds: max_attempts must be a whole number >= 1")
        for name in ("stale_after", "janitor_interval", "compat_timeout"):
            if not is_positive(getattr(self, name)):
                found.append(f"OnDemandBuilds: {name} must be a number of seconds > 0")
        if self.signing_key is not None and not is_renderable(self.signing_key) and (
            not isinstance(self.signing_key, str) or not self.signing_key.strip()
        ):
            found.append("OnDemandBuilds: signing_key must be the path of a PEM Ed25519 key,"
                         " its PEM text, a secret such as util.Secret(\"name\"), or None")
        return found

    async def with_secrets(self, secrets: SecretRenderer) -> OnDemandBuilds:
        """These settings with ``signing_key`` rendered (see ``buildbot_farm.secret_values``)."""
        signing_key = await secrets.text(self.signing_key, "OnDemandBuilds: signing_key")
        return dataclasses.replace(self, signing_key=signing_key)
