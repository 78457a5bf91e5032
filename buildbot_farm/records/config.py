"""``util.BuildRecords``: the records settings FarmService takes as ``records=``.

A plain, frozen description checked by ``problems()``; FarmService serves the records API
with it (API keys, the provenance signing key, optionally a port of its own).
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from buildbot_farm.config_checks import checked_keywords
from buildbot_farm.secret_values import SecretRenderer, is_renderable, literal_problem

MIN_KEY_LENGTH = 16


@checked_keywords("util.BuildRecords")
@dataclass(frozen=True)
class BuildRecords:
    """How the build records API is served: ``util.BuildRecords(api_keys={...}, ...)``.

    ``api_keys`` (name -> key) may POST records; ``admin_keys`` may also DELETE them; the
    name is what a tombstone records as who deleted. ``signing_key`` is the PEM Ed25519 key
    that signs provenance: the path of its file (relative to the master's basedir; created
    when missing) or the PEM text itself. Each key, and ``signing_key``, may be a secret
    rendered with the master's secret providers at (re)config (``util.Secret("name")``,
    ``util.Interpolate(...)``); keys are then checked as literal ones are. ``port`` (a
    Twisted endpoint such as ``tcp:8011:interface=127.0.0.1``) also serves the
    API on a port of its own. ``builder_id`` names this builder in provenance (default:
    the master's ``buildbotURL``).
    """

    api_keys: Mapping[str, Any] = field(default_factory=dict, repr=False)
    admin_keys: Mapping[str, Any] = field(default_factory=dict, repr=False)
    signing_key: Any = field(default="records-signing-key.pem", repr=False)
    port: str | None = None
    builder_id: str | None = None

    def problems(self) -> list[str]:
        """What is wrong with these settings, each naming its argument."""
        found = []
        for argument in ("api_keys", "admin_keys"):
            keys = getattr(self, argument)
            if not isinstance(keys, Mapping) or not all(isinstance(k, str) and k for k in keys):
                found.append(
                    f"BuildRecords: {argument} must map names to keys of at least"
                    f" {MIN_KEY_LENGTH} characters (or secrets such as util.Secret(\"name\"))"
                )
                continue
            for name, key in keys.items():
                problem = literal_problem(key, f"BuildRecords: {argument}[{name!r}]",
                                          MIN_KEY_LENGTH)
                if problem:
                    found.append(problem)
        if not is_renderable(self.signing_key) and (
            not isinstance(self.signing_key, str) or not self.signing_key.strip()
        ):
            found.append("BuildRecords: signing_key must be the path of a PEM Ed25519 key, its"
                         " PEM text, or a secret such as util.Secret(\"name\")")
        if self.port is not None and (not isinstance(self.port, str) or ":" not in self.port):
            found.append(
                "BuildRecords: port must be a Twisted endpoint such as"
                " 'tcp:8011:interface=127.0.0.1'"
            )
        if self.builder_id is not None and not isinstance(self.builder_id, str):
            found.append("BuildRecords: builder_id must be a URI string")
        return found

    async def with_secrets(self, secrets: SecretRenderer) -> BuildRecords:
        """These settings with their keys rendered (see ``buildbot_farm.secret_values``)."""
        async def keys(argument: str) -> dict[str, Any]:
            return {
                name: await secrets.text(key, f"BuildRecords: {argument}[{name!r}]",
                                         MIN_KEY_LENGTH)
                for name, key in getattr(self, argument).items()
            }

        return dataclasses.replace(
            self,
            api_keys=await keys("api_keys"),
            admin_keys=await keys("admin_keys"),
            signing_key=await secrets.text(self.signing_key, "BuildRecords: signing_key"),
        )


@dataclass(frozen=True)
class Caller:
    """Who presented a valid key, and whether it is an admin key."""

    name: str
    admin: bool


def identify(settings: BuildRecords, key: str) -> Caller | None:
    """The caller whose key is ``key`` (compared in constant time), or None."""
    found: Caller | None = None
    for admin, keys in ((True, settings.admin_keys), (False, settings.api_keys)):
        for name, expected in keys.items():
            if hmac.compare_digest(expected.encode(), key.encode()) and found is None:
                found = Caller(name, admin)
    return found


def bearer_key(header: bytes | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.decode(errors="replace").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
