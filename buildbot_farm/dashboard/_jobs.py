"""The On-demand jobs page: each job's key, parameters, status, attempts, build and artifact."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from buildbot_farm.dashboard import _pages as pages
from buildbot_farm.dashboard._builds import BuildLink, BuildLinks
from buildbot_farm.ondemand.store import ACTIVE, Job

JOBS_PAGE_SIZE = 50
# Job states that change without anyone asking: the page reloads itself while one is shown.
IN_PROGRESS = (*ACTIVE, "retry")
KEY_SHOWN = 12

ONDEMAND_CFG = """util.FarmService(
    artifacts=util.ArtifactRepository(),
    on_demand=util.OnDemandBuilds(),
)
c["schedulers"].append(schedulers.OnDemandScheduler(
    name="tool", builder="tool", artifact="bin/tool/*/tool",
    parameters=[util.OnDemandChoice("os", choices=("linux", "darwin"))],
))"""


@dataclass(frozen=True)
class AttemptLine:
    """What the page shows of one attempt: plain values, so that the template reads
    attributes instead of calling methods (each call in a template is costly)."""

    number: int
    worker: str | None
    result: str | None
    error: str | None
    build: BuildLink | None


def parameters_cell(parameters: str) -> list[tuple[str, str]] | None:
    """A job's canonical JSON parameters as ``(name, value)`` pairs by name (a list's
    values joined by ``,``); None when they are not JSON."""
    try:
        values = json.loads(parameters)
    except ValueError:
        return None
    if not isinstance(values, dict):
        return []
    return [(name, _value(value)) for name, value in sorted(values.items())]


def _value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


async def jobs_body(host: Any, links: BuildLinks, api_base: str) -> tuple[Markup, bool]:
    """The page's HTML and whether a job is in progress (so the page should reload).

    ``host`` is FarmService's OnDemandHost; ``api_base`` the farm API's URL (ending in
    ``/``) for the job's JSON and its download.
    """
    jobs = host.jobs
    if jobs is None:
        return pages.empty_state("This farm does not run on-demand builds.", ONDEMAND_CFG), False
    found: list[Job] = await jobs.recent(JOBS_PAGE_SIZE)
    if not found:
        return pages.render("no_jobs.html", api_base=api_base), False
    attempts_of = await jobs.attempts_of([job.key for job in found])
    rows = []
    for job in found:
        attempts = [AttemptLine(int(row["attempt"]), row["worker"], row["result"], row["error"],
                                await links.link(row["build_id"]))
                    for row in attempts_of[job.key]]
        rows.append({"job": job, "parameters": parameters_cell(job.parameters),
                     "attempts": attempts})
    body = pages.render("jobs.html", rows=rows, api_base=api_base, key_shown=KEY_SHOWN,
                        page_size=JOBS_PAGE_SIZE)
    return body, any(job.status in IN_PROGRESS for job in found)
