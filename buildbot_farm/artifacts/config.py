"""The artifact repository as master.cfg describes it: ``util.ArtifactRepository(...)``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from buildbot_farm.artifacts.paths import DEFAULT_LAYOUT, UnsafePath, layout_problems, split
from buildbot_farm.artifacts.s3_config import S3Bucket
from buildbot_farm.config_checks import checked_keywords
from buildbot_farm.config_checks.values import is_positive, is_whole, is_whole_at_least
from buildbot_farm.secret_values import SecretRenderer

GIB = 1024**3


@checked_keywords("util.ArtifactRepository")
@dataclass(frozen=True)
class ArtifactRepository:
    """Where artifacts live and the rules for writing them; give it to FarmService(artifacts=).

    ``directory`` (relative to the master's basedir) holds the files, laid out by
    ``layout`` (placeholders ``{kind}``, ``{project}``, ``{build}``). ``public_url`` is the
    address downloads are announced under (default: the master's buildbotURL +
    ``plugins/farm/artifacts/``; set it to nginx's address when nginx serves them).
    Uploads larger than ``max_upload_size`` bytes are refused; an existing file is replaced
    only with ``allow_overwrite``. Tokens die at the end of their build or ``token_ttl``
    seconds after minting. ``retention`` maps a path prefix (``"bin/nightly"``) to the
    seconds a build's files under it are kept (the longest matching prefix wins; ``""`` is
    the default; unmatched builds are kept forever); the janitor runs every
    ``janitor_interval`` seconds. ``storage=util.S3Bucket(...)`` keeps the files in an
    S3-compatible bucket instead (``directory`` then only spools uploads).
    ``token_builders`` (builder names or ``fnmatch`` patterns) opts builders in to a token
    minted by the master before their first step (see ``build_tokens``).
    ``port`` also serves the repository on a port of its own (on ``interface``), where
    uploads stream into the storage and are refused before their body is sent; it then
    is the default ``public_url`` (``http://HOST:PORT/``, HOST from buildbotURL).
    """

    directory: str = "artifacts"
    public_url: str | None = None
    layout: str = DEFAULT_LAYOUT
    max_upload_size: int = 2 * GIB
    allow_overwrite: bool = False
    token_ttl: float = 6 * 3600.0
    retention: Mapping[str, float] = field(default_factory=dict)
    janitor_interval: float = 600.0
    storage: S3Bucket | None = None
    token_builders: Sequence[str] = ()
    port: int | None = None
    interface: str = "127.0.0.1"

    def problems(self) -> list[str]:
        """What is wrong with this repository, each naming its argument."""
        found = []
        if not isinstance(self.directory, str) or not self.directory:
            found.append("ArtifactRepository: directory must be a non-empty path")
        if self.public_url is not None and (
            not isinstance(self.public_url, str)
            or not self.public_url.startswith(("http://", "https://"))
        ):
            found.append("ArtifactRepository: public_url must be an http:// or https:// URL")
        found += [f"ArtifactRepository: {p}" for p in layout_problems(self.layout)]
        if not is_whole_at_least(self.max_upload_size, 1):
            found.append("ArtifactRepository: max_upload_size must be a number of bytes >= 1")
        if self.port is not None and (not is_whole(self.port) or not 0 <= self.port <= 65535):
            found.append("ArtifactRepository: port must be a TCP port number (0-65535) or None")
        if not isinstance(self.interface, str) or not self.interface:
            found.append("ArtifactRepository: interface must be an address to listen on,"
                         " such as '127.0.0.1' or '0.0.0.0'")
        if not isinstance(self.allow_overwrite, bool):
            found.append("ArtifactRepository: allow_overwrite must be True or False")
        for name in ("token_ttl", "janitor_interval"):
            if not is_positive(getattr(self, name)):
                found.append(f"ArtifactRepository: {name} must be a number of seconds > 0")
        if self.storage is not None and not isinstance(self.storage, S3Bucket):
            found.append("ArtifactRepository: storage must be util.S3Bucket(...) or None"
                         " (the local directory)")
        elif self.storage is not None:
            found += [f"ArtifactRepository: storage: {p}" for p in self.storage.problems()]
        if isinstance(self.token_builders, str) or not isinstance(
            self.token_builders, Sequence
        ) or not all(isinstance(p, str) and p.strip() for p in self.token_builders):
            found.append("ArtifactRepository: token_builders must be a list of builder names"
                         f" or fnmatch patterns, not {self.token_builders!r}")
        if not isinstance(self.retention, Mapping):
            found.append("ArtifactRepository: retention must map path prefixes to seconds")
            return found
        for prefix, ttl in self.retention.items():
            try:
                if not isinstance(prefix, str):
                    raise UnsafePath(f"{prefix!r} is not a string")
                split(prefix)
            except UnsafePath:
                found.append(f"ArtifactRepository: retention prefix {prefix!r} is not a safe path")
            if not is_positive(ttl):
                found.append(f"ArtifactRepository: retention for {prefix!r} must be seconds > 0")
        return found

    async def with_secrets(self, secrets: SecretRenderer) -> ArtifactRepository:
        """This repository with its S3 keys rendered (see ``buildbot_farm.secret_values``)."""
        if not isinstance(self.storage, S3Bucket):
            return self
        return dataclasses.replace(self, storage=await self.storage.with_secrets(secrets))

    def retention_for(self, path: str) -> float | None:
        """Seconds the files of the build directory ``path`` are kept; None: forever."""
        best: tuple[int, float] | None = None
        segments = split(path)
        for prefix, ttl in self.retention.items():
            wanted = split(prefix)
            if segments[: len(wanted)] == wanted and (best is None or len(wanted) > best[0]):
                best = (len(wanted), float(ttl))
        return None if best is None else best[1]
