"""``FarmLatentWorker``'s own arguments (``LeaseSettings``), and what it tells its builds.

Checked in one place for checkConfig and reconfig; the worker itself is in
:mod:`buildbot_farm.leases.worker`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from buildbot_farm.config_checks.values import is_number, is_positive
from buildbot_farm.leases import keys
from buildbot_farm.names import FARM_SERVICE

# The build property FarmLatentWorker sets on a build whose buildlet's lease was lost (its
# host stopped answering): the coordinator's reason, which names the host.
LOST_PROPERTY = "farm_lost"
# The variable the worker's exec gets with its buildlet's name: a worker left running on a
# buildlet that is no longer the worker's (lost with its host) is refused when it reconnects.
BUILDLET_ENV = "FARM_BUILDLET"


@dataclass(frozen=True)
class LeaseSettings:
    """FarmLatentWorker's own arguments, checked in one place for checkConfig and reconfig.

    ``coordinator_url`` None means the coordinator of this master's farm service (named
    ``farm``); then ``key`` may be None too, and is derived from that coordinator's secret.
    ``key`` may be a secret (``util.Secret("farm-lease-key")``), rendered at (re)config.
    ``lease_wait`` is how long a substantiation waits in line when the pool is full (0: it
    fails at once, and Buildbot retries the build after its quarantine).
    ``start_on_request`` is how long a worker started by a build request (see
    :mod:`buildbot_farm.leases.request_start`) keeps its buildlet for a build that does not
    come; 0 starts workers only when Buildbot substantiates them.
    """

    buildlet_type: Any = "local"
    coordinator_url: str | None = None
    user: str = "user-buildbot"
    key: Any = field(default=None, repr=False)
    master_host: str = "127.0.0.1"
    python: str = "python3"
    keepalive_interval: float = 60.0
    farm: str = FARM_SERVICE
    lease_wait: float = 1800.0
    start_on_request: float = 30.0

    def problems(self) -> list[str]:
        """What is wrong, each naming its argument."""
        found = []
        try:
            keys.check_user(self.user)
        except ValueError as e:
            found.append(f"user: {e}")
        if self.coordinator_url is not None and not str(self.coordinator_url).startswith(
            ("http://", "https://")
        ):
            found.append(f"coordinator_url must be an http(s) URL, not {self.coordinator_url!r}")
        if self.coordinator_url is not None and self.key is None:
            found.append("key is required with coordinator_url (buildbot-farm key USER)")
        if not is_positive(self.keepalive_interval):
            found.append("keepalive_interval must be a number of seconds > 0")
        for name in ("lease_wait", "start_on_request"):
            value = getattr(self, name)
            if not is_number(value) or not 0 <= value < float("inf"):
                found.append(f"{name} must be a number of seconds >= 0")
        return found



LEASE_ARGS = tuple(f.name for f in fields(LeaseSettings))
