"""Clients of Docker engines, local or remote (TCP with TLS client certificates).

``engine_api`` is the one way the farm makes a docker-py client of an engine named by URL.
A TLS client ignores the environment's CA bundle settings (``REQUESTS_CA_BUNDLE``,
``CURL_CA_BUNDLE``): requests lets those override a session's own CA file, so with them set
every TLS connection to an engine with a private CA would fail its verification.
"""

from __future__ import annotations

from dataclasses import dataclass

import docker
from docker.constants import MINIMUM_DOCKER_API_VERSION

__all__ = ["TLSFiles", "engine_api"]


@dataclass(frozen=True)
class TLSFiles:
    """Paths of PEM files: the CA the engine's certificate must chain to, the client's
    certificate and its key."""

    ca: str
    cert: str
    key: str

    def config(self) -> docker.tls.TLSConfig:
        """docker-py's TLS settings: present ``cert``, verify the engine against ``ca``."""
        return docker.tls.TLSConfig(client_cert=(self.cert, self.key), ca_cert=self.ca, verify=True)


def engine_api(
    url: str | None, tls: TLSFiles | None = None, timeout: float = 60.0
) -> docker.APIClient:
    """A client of the engine at ``url`` (None: ``DOCKER_HOST``, else the local socket).

    It asks the engine its API version, so it raises docker-py's errors when the engine does
    not answer within ``timeout`` seconds.
    """
    if url is None:
        return docker.APIClient(version="auto", timeout=timeout, **docker.utils.kwargs_from_env())
    if tls is None:
        return docker.APIClient(base_url=url, version="auto", timeout=timeout)
    probe = _tls_client(url, tls, MINIMUM_DOCKER_API_VERSION, timeout)
    try:
        version = str(probe.version(api_version=False)["ApiVersion"])
    finally:
        probe.close()
    return _tls_client(url, tls, version, timeout)


def _tls_client(url: str, tls: TLSFiles, version: str, timeout: float) -> docker.APIClient:
    api = docker.APIClient(base_url=url, tls=tls.config(), version=version, timeout=timeout)
    api.trust_env = False  # the session's CA file, not the environment's bundle
    return api
