"""The On-demand jobs page: each job's key, parameters, status, attempts, build and artifact."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from buildbot_farm.dashboard import _pages as pages
from buildbot_farm.dashboard._builds import BuildLinks
from buildbot_farm.ondemand.jobs import ACTIVE, Job

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


def parameters_cell(parameters: str) -> str:
    """HTML: a job's canonical JSON parameters as ``name=value`` lines."""
    try:
        values = json.loads(parameters)
    except ValueError:
        return f"<code>{pages.esc(parameters)}</code>"
    if not isinstance(values, dict) or not values:
        return "(none)"
    return "<br>".join(
        f"<code>{pages.esc(name)}={pages.esc(_value(value))}</code>"
        for name, value in sorted(values.items()))


def _value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


async def attempts_cell(attempts: list[dict[str, Any]], links: BuildLinks) -> str:
    """HTML: one line per attempt: number, worker, result or error, and its build."""
    lines = []
    for attempt in attempts:
        outcome = attempt.get("result") or "in progress"
        parts = [f"#{int(attempt['attempt'])}",
                 f"on {attempt['worker']}" if attempt.get("worker") else "waiting for a worker",
                 outcome]
        text = pages.esc(" ".join(parts))
        build = await links.link(attempt.get("build_id"))
        error = f' <span class="error-text">{pages.esc(attempt["error"])}</span>' if (
            attempt.get("error")) else ""
        lines.append(f'<span class="attempt">{text}{" · " + build if build else ""}{error}</span>')
    return "<br>".join(lines)


async def jobs_body(host: Any, links: BuildLinks, api_base: str) -> tuple[str, bool]:
    """The page's HTML and whether a job is in progress (so the page should reload).

    ``host`` is FarmService's OnDemandHost; ``api_base`` the farm API's URL (ending in
    ``/``) for the job's JSON and its download.
    """
    jobs = host.jobs
    if jobs is None:
        return pages.empty_state("This farm does not run on-demand builds.", ONDEMAND_CFG), False
    found: list[Job] = await jobs.recent(JOBS_PAGE_SIZE)
    if not found:
        return ('<p class="empty">No on-demand jobs yet. Submit one with the scheduler\'s'
                " form in Buildbot's web UI, or with <code>curl -d '{\"os\": \"linux\"}'"
                f" {pages.esc(api_base)}build</code>.</p>"), False
    rows = []
    for job in found:
        quoted = quote(job.key, safe="")
        key = (f'<a href="{pages.esc(api_base + "build/" + quoted)}" class="key"'
               f' title="{pages.esc(job.key)}"><code>{pages.esc(job.key[:KEY_SHOWN])}</code></a>')
        status = pages.esc(job.status) + (
            f'<br><span class="error-text">{pages.esc(job.error)}</span>' if job.error else "")
        artifact = ""
        if job.artifact is not None and job.status == "succeeded":
            artifact = (pages.link(api_base + "download/" + quoted, "download")
                        + f"<br><code>{pages.esc(job.artifact.path)}</code>"
                        + f" {pages.esc(pages.size(job.artifact.size))}")
        rows.append((key, pages.esc(job.scheduler), parameters_cell(job.parameters), status,
                     await attempts_cell(await jobs.attempts(job.key), links), artifact))
    body = pages.table(("key", "scheduler", "parameters", "status", "attempts", "artifact"),
                       rows, "jobs")
    if len(found) == JOBS_PAGE_SIZE:
        body += f"<p>The {JOBS_PAGE_SIZE} most recently changed jobs are shown.</p>"
    return body, any(job.status in IN_PROGRESS for job in found)
