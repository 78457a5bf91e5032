"""What isolating process buildlets costs: a warm lease's create-to-first-exec time.

Issue 13's target: the isolation (bubblewrap sandbox, the agent as the unprivileged
``farm-buildlet`` user) adds less than 20% to the time from ``create`` on a warm pool to
the end of the lease's first exec (``true``). Measured through a real coordinator (SQLite)
on loopback with real agents, for the process provider without isolation
(``sandbox="none"``, the master's user), with the sandbox only, and with both. Run as root
(the user is created if missing); bubblewrap must be installed.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.bench_leases import Bench, percentile, run_on_reactor, start_bench, table
from buildbot_farm import db
from buildbot_farm.leases.buildlet_user import BUILDLET_USER, ensure_buildlet_user
from buildbot_farm.leases.providers import ProcessProvider
from tests.harness.twisted_reactor import reactor

LEASES = 30
TARGET_RATIO = 1.2
# label: (ProcessProvider's sandbox, its run_as)
CONFIGURATIONS: dict[str, tuple[str, str | None]] = {
    "no isolation (sandbox='none')": ("none", None),
    "bubblewrap": ("bwrap", None),
    "bubblewrap + run_as": ("bwrap", BUILDLET_USER),
}


async def first_exec_latencies(bench: Bench) -> list[float]:
    """Seconds from ``create`` on the warm type to the end of the first ``true`` exec."""
    took = []
    for _ in range(LEASES):
        await bench.coordinator.wait_until_warm()
        started = time.perf_counter()
        name = (await bench.client.create("warm"))["Name"]
        status = await bench.client.exec(name, "true", [])
        took.append(time.perf_counter() - started)
        if not status.ok:
            raise RuntimeError(f"the first exec on {name} failed: {status}")
        await bench.client.destroy(name)
    return took


async def measure(workdir: Path) -> str:
    """Each configuration's latencies, as a table with the ratios to no isolation."""
    database = await db.connect(f"sqlite:///{workdir / 'farm.sqlite'}", reactor)
    results: dict[str, list[float]] = {}
    try:
        for label, (sandbox, run_as) in CONFIGURATIONS.items():
            root = workdir / f"buildlets-{len(results)}"
            provider = ProcessProvider(root, reactor, sandbox=sandbox, run_as=run_as)
            bench = await start_bench(database, provider)
            try:
                results[label] = await first_exec_latencies(bench)
            finally:
                await bench.close()
    finally:
        await database.stop()
    base = percentile(next(iter(results.values())), 50)
    rows = [[f"warm create -> first exec, ms (n={LEASES})", "p50", "p90", "ratio (p50)",
             "target"]]
    for label, samples in results.items():
        rows.append([label, f"{percentile(samples, 50) * 1000:.1f}",
                     f"{percentile(samples, 90) * 1000:.1f}",
                     f"{percentile(samples, 50) / base:.2f}x",
                     "" if samples is next(iter(results.values())) else f"< {TARGET_RATIO:g}x"])
    worst = max(percentile(s, 50) for s in results.values()) / base
    verdict = "met" if worst < TARGET_RATIO else "MISSED"
    return f"{table(rows)}\nisolation overhead target (< +20%): {verdict} ({worst:.2f}x)"


def main() -> None:
    """Measure, print the table, and leave no buildlet or file behind."""
    if ensure_buildlet_user() is None:
        raise SystemExit(f"bench_isolation: run as root (it needs the user {BUILDLET_USER})")
    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as workdir:
        print(run_on_reactor(lambda: measure(Path(workdir))), flush=True)
