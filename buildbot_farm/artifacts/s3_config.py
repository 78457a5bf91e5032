"""An S3-compatible bucket as master.cfg describes it: ``util.S3Bucket(...)``."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from buildbot_farm.config_checks import checked_keywords
from buildbot_farm.config_checks.values import is_whole, is_whole_at_least
from buildbot_farm.secret_values import SecretRenderer, is_renderable

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB


@checked_keywords("util.S3Bucket")
@dataclass(frozen=True)
class S3Bucket:
    """Artifacts kept in an S3-compatible bucket; give it to ``ArtifactRepository(storage=)``.

    ``endpoint`` is the service's base URL (``https://s3.eu-west-1.amazonaws.com``,
    ``http://127.0.0.1:9000`` for a local server); objects are addressed path-style
    (``ENDPOINT/BUCKET/KEY``), which every S3-compatible server accepts. The bucket must
    exist. Object keys are ``prefix`` + the artifact's path. ``access_key`` and
    ``secret_key`` are strings or secrets rendered with the master's secret providers at
    (re)config (``util.Secret("s3-secret-key")``, ``util.Interpolate(...)``); without
    them boto3's standard credential chain applies (environment, shared files, web
    identity, container and instance roles). Requests time out after ``timeout`` seconds
    and are tried up to ``attempts`` times with backoff. Files larger than ``part_size``
    bytes are uploaded in parts of that size (S3 takes 5 MiB to 5 GiB).
    """

    endpoint: str
    bucket: str
    access_key: Any = None
    secret_key: Any = None
    region: str = "us-east-1"
    prefix: str = ""
    timeout: float = 60.0
    part_size: int = 64 * MiB
    attempts: int = 3

    def problems(self) -> list[str]:
        """What is wrong with this bucket description, each naming its argument."""
        found = []
        parts = urlsplit(self.endpoint) if isinstance(self.endpoint, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
                or parts.query or parts.fragment:
            found.append("S3Bucket: endpoint must be an http:// or https:// URL"
                         " (e.g. 'https://s3.eu-west-1.amazonaws.com')")
        if not isinstance(self.bucket, str) or not _BUCKET_NAME.match(self.bucket):
            found.append("S3Bucket: bucket must be an S3 bucket name (3-63 characters:"
                         " lowercase letters, digits, '.' and '-')")
        if (self.access_key is None) != (self.secret_key is None):
            found.append("S3Bucket: give both access_key and secret_key, or neither"
                         " (then the standard AWS credential chain is used)")
        for name in ("access_key", "secret_key", "region"):
            value = getattr(self, name)
            if name != "region" and (is_renderable(value) or value is None):
                continue
            if not isinstance(value, str) or not value or value != value.strip():
                found.append(f"S3Bucket: {name} must be a non-empty string without"
                             " surrounding spaces" + ("" if name == "region" else
                                                      " or a renderable like util.Secret(...)"))
        if not isinstance(self.prefix, str) or self.prefix.startswith("/") \
                or "//" in self.prefix or ".." in self.prefix.split("/"):
            found.append("S3Bucket: prefix must be a relative key prefix like 'artifacts/'"
                         " (no leading '/', no '//' or '..')")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) \
                or self.timeout <= 0:
            found.append("S3Bucket: timeout must be a number of seconds > 0")
        if not is_whole(self.part_size) or not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            found.append(f"S3Bucket: part_size must be a whole number of bytes from"
                         f" {MIN_PART_SIZE} (5 MiB) to {MAX_PART_SIZE} (5 GiB), S3's limits")
        if not is_whole_at_least(self.attempts, 1):
            found.append("S3Bucket: attempts must be a whole number >= 1 (requests tried"
                         " that many times, with backoff)")
        return found

    async def with_secrets(self, secrets: SecretRenderer) -> S3Bucket:
        """This bucket with its keys rendered (see ``buildbot_farm.secret_values``)."""
        if self.access_key is None and self.secret_key is None:
            return self
        return dataclasses.replace(
            self,
            access_key=await secrets.text(self.access_key, "S3Bucket: access_key"),
            secret_key=await secrets.text(self.secret_key, "S3Bucket: secret_key"),
        )

    @property
    def key_prefix(self) -> str:
        """``prefix`` ending in ``/`` (or empty): what every object key starts with."""
        return self.prefix if not self.prefix or self.prefix.endswith("/") else self.prefix + "/"

    def __repr__(self) -> str:
        """Everything but the secret key, so logs and config errors never show it."""
        return (f"S3Bucket(endpoint={self.endpoint!r}, bucket={self.bucket!r},"
                f" region={self.region!r}, prefix={self.prefix!r})")
