"""Where buildlets come from: a provider starts, finds and destroys them for one type."""

from __future__ import annotations

from buildbot_farm.leases.providers.base import BuildletProvider, ProviderError, StartedBuildlet
from buildbot_farm.leases.providers.docker import DockerProvider
from buildbot_farm.leases.providers.process import ProcessProvider

__all__ = [
    "BuildletProvider",
    "DockerProvider",
    "ProcessProvider",
    "ProviderError",
    "StartedBuildlet",
]
