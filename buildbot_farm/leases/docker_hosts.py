"""Docker hosts a pool spreads over: ``util.DockerHost`` and ``util.DockerTLS`` in master.cfg.

``util.BuildletPool("linux", provider="docker", image=..., hosts=[util.DockerHost(
"tcp://build1:2376", tls=util.DockerTLS(ca=..., cert=..., key=...), max_count=8), ...])``.
Each TLS item is the path of a PEM file, PEM text, or a secret rendering to either
(``util.Secret("build1-key")``); PEM text is written at (re)config to a file only the master's
user may read, in the master's basedir.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from buildbot_farm.config_checks import checked_keywords
from buildbot_farm.config_checks.values import is_whole
from buildbot_farm.docker_engines import TLSFiles
from buildbot_farm.secret_values import SecretRenderer, is_pem, is_renderable

SCHEMES = ("tcp", "unix", "ssh", "http", "https")
TLS_PARTS = ("ca", "cert", "key")


@checked_keywords("util.DockerTLS")
@dataclass(frozen=True)
class DockerTLS:
    """TLS with client certificates to a Docker engine (dockerd ``--tlsverify``).

    ``ca`` is the CA the engine's certificate must chain to; ``cert`` and ``key`` are the
    client certificate the engine trusts and its key. Each is a PEM file's path, PEM text,
    or a secret (``util.Secret("name")``) rendering to either.
    """

    ca: Any
    cert: Any
    key: Any = dataclasses.field(repr=False)

    def problems(self, where: str) -> list[str]:
        """What is wrong with these settings; ``where`` prefixes each message."""
        found = []
        for part in TLS_PARTS:
            value = getattr(self, part)
            if is_renderable(value):
                continue
            if not isinstance(value, str) or not value.strip():
                found.append(f"{where}: DockerTLS {part} must be a PEM file's path, PEM text "
                             "or a secret such as util.Secret(\"name\")")
            elif not is_pem(value) and not Path(value).is_file():
                found.append(f"{where}: DockerTLS {part} file {value!r} does not exist")
        return found

    async def with_secrets(self, secrets: SecretRenderer, where: str) -> DockerTLS:
        """These settings with their secrets rendered (each must be a path or PEM text)."""
        rendered = {}
        for part in TLS_PARTS:
            value = getattr(self, part)
            text = await secrets.text(value, f"{where}: DockerTLS {part}")
            if is_renderable(value) and isinstance(text, str) and not is_pem(text) and not (
                Path(text).is_file()
            ):
                secrets.fail(f"{where}: DockerTLS {part}", value,
                             "neither PEM text nor the path of an existing file")
            rendered[part] = text
        return DockerTLS(**rendered)

    def files(self, directory: Path) -> TLSFiles:
        """The paths docker-py reads: PEM text is written into ``directory`` (mode 0600)."""
        paths = {}
        for part in TLS_PARTS:
            value = getattr(self, part)
            if is_pem(value):
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                path = directory / f"{part}.pem"
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(descriptor, "w") as out:
                    out.write(value.strip() + "\n")
                paths[part] = str(path)
            else:
                paths[part] = str(value)
        return TLSFiles(**paths)


@checked_keywords("util.DockerHost")
@dataclass(frozen=True)
class DockerHost:
    """A Docker engine a pool places buildlets on, at most ``max_count`` at a time.

    ``url`` is the engine's Docker URL (``tcp://build1:2376``; ``unix:///var/run/docker.sock``
    for this machine's). ``tls`` (a :class:`DockerTLS`) is required for ``tcp://`` engines:
    an engine on TCP without client certificates gives root on its host to anyone who can
    reach it. ``name`` (default: the URL's host name) names the host on /status and in the
    reasons of lost leases. The buildlet agents use the host's network: the coordinator
    reaches each at the URL's host address, so the agents' ports must be reachable from the
    master (the same route as the engine's port).
    """

    url: str
    tls: DockerTLS | None = None
    max_count: int = 4
    name: str | None = None

    @property
    def label(self) -> str:
        """The host's name: ``name``, else the URL's host name (``local`` for a socket)."""
        if self.name:
            return self.name
        return urlsplit(self.url).hostname or "local"

    @property
    def address(self) -> str:
        """Where the host's agents listen and are reached: the URL's host, or loopback."""
        return urlsplit(self.url).hostname or "127.0.0.1"

    def problems(self, where: str) -> list[str]:
        """What is wrong with this host, each message prefixed by ``where``."""
        if not isinstance(self.url, str) or urlsplit(self.url).scheme not in SCHEMES:
            return [f"{where}: DockerHost url {self.url!r} must be a Docker URL such as "
                    "tcp://build1:2376 or unix:///var/run/docker.sock"]
        where = f"{where}: host {self.label}"
        found = []
        if not is_whole(self.max_count) or self.max_count < 1:
            found.append(f"{where}: max_count must be >= 1")
        if self.tls is None and urlsplit(self.url).scheme == "tcp":
            found.append(f"{where}: a tcp:// engine needs tls=util.DockerTLS(ca=..., cert=..., "
                         "key=...) (dockerd --tlsverify)")
        elif self.tls is not None and not isinstance(self.tls, DockerTLS):
            found.append(f"{where}: tls must be util.DockerTLS(ca=..., cert=..., key=...)")
        elif self.tls is not None:
            found += self.tls.problems(where)
        return found

    async def with_secrets(self, secrets: SecretRenderer, where: str) -> DockerHost:
        """This host with its TLS secrets rendered."""
        if self.tls is None:
            return self
        tls = await self.tls.with_secrets(secrets, f"{where}: host {self.label}")
        return dataclasses.replace(self, tls=tls)


def hosts_problems(hosts: Any, provider: str, where: str) -> list[str]:
    """What is wrong with a pool's ``hosts`` setting."""
    if not hosts:
        return []
    if provider != "docker":
        return [f"{where}: hosts= applies to the docker provider"]
    if not all(isinstance(host, DockerHost) for host in hosts):
        return [f"{where}: hosts must be util.DockerHost(...) objects"]
    found = [problem for host in hosts for problem in host.problems(where)]
    labels = [host.label for host in hosts]
    if len(set(labels)) != len(labels):
        found.append(f"{where}: host names repeat ({labels}); give each a name=")
    return found
