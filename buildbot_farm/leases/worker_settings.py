"""``FarmLatentWorker``'s own arguments (``LeaseSettings``), what they need from the farm
the worker leases from (:func:`lease_problems`), its timings (quarantine after a
preemption, retries of a leftover's release) and what the worker tells its builds.

Checked in one place for checkConfig and reconfig; the worker itself is in
:mod:`buildbot_farm.leases.worker`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from buildbot_farm.config_checks import suggestion
from buildbot_farm.config_checks.values import is_number, is_positive
from buildbot_farm.leases import keys
from buildbot_farm.names import FARM_SERVICE

# The build property FarmLatentWorker sets on a build whose buildlet's lease was lost (its
# host stopped answering): the coordinator's reason, which names the host.
LOST_PROPERTY = "farm_lost"
# The variable the worker's exec gets with its buildlet's name: a worker left running on a
# buildlet that is no longer the worker's (lost with its host) is refused when it reconnects.
BUILDLET_ENV = "FARM_BUILDLET"
# Seconds a worker whose buildlet was preempted takes no builds, at least: AWS gives two
# minutes' notice, GCE and Azure about 30 s, so by then the host is gone or replaced.
PREEMPTION_QUARANTINE = 120.0
# How often, and how many times, a starting master tries to release the buildlet its worker
# held before a crash (this master's own coordinator answers only once its web server runs).
LEFTOVER_RETRY_INTERVAL = 1.0
LEFTOVER_ATTEMPTS = 120


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

REMOTE = "or give this worker coordinator_url=, user= and key= of another farm's coordinator"


def lease_problems(who: str, lease: LeaseSettings, farms: Mapping[str, Any]) -> Iterator[str]:
    """What is missing for ``lease`` (of the worker ``who``) among the FarmServices ``farms``
    of master.cfg (their settings by name; None where their own arguments are bad)."""
    if lease.coordinator_url is not None:
        return
    if lease.farm not in farms:
        yield (f"{who}: leases from the coordinator of the FarmService {lease.farm!r} (its"
               f" farm= argument), but c['services'] has no util.FarmService named"
               f" {lease.farm!r}: add util.FarmService(name={lease.farm!r},"
               f" coordinator=util.FarmCoordinator(...)) to c['services'], {REMOTE}")
        return
    settings = farms[lease.farm]
    if settings is None:
        return
    coordinator = settings.coordinator
    if coordinator is None:
        yield (f"{who}: the FarmService {lease.farm!r} in c['services'] runs no coordinator"
               f" to lease from: give it coordinator=util.FarmCoordinator(secret=...,"
               f" pools=[util.BuildletPool(...)]), {REMOTE}")
        return
    wanted = lease.buildlet_type
    pools = [getattr(pool, "name", None) for pool in coordinator.pools]
    if isinstance(wanted, str) and wanted not in pools:
        names = [p for p in pools if isinstance(p, str)]
        yield (f"{who}: buildlet_type {wanted!r} is not a pool of the coordinator of the"
               f" FarmService {lease.farm!r}; its pools are {', '.join(names) or 'none'}"
               f"{suggestion(wanted, names)}: use one of them, or add"
               f" util.BuildletPool({wanted!r}) to its FarmCoordinator(pools=[...])")
