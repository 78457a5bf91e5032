"""The dashboard's On-demand jobs page against the same page written by hand.

A farm database (SQLite, in memory) holds ``JOBS`` succeeded jobs of two attempts each,
the first failed: a full page. Both sides read the same rows from it and produce the same
table:

* the farm: ``jobs_body`` and ``page`` (the page's Jinja2 templates, autoescaped), with
  build links looked up in a Buildbot data API that answers from memory;
* the reference: the same reads, then the HTML joined from f-strings with
  ``html.escape`` (how the dashboard was written before Jinja2).

Each figure is the median time per page over ``PAGES`` pages, wall and CPU of this
process, over ``ROUNDS`` rounds taken in turn.
"""

from __future__ import annotations

import html
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from twisted.internet import defer, task

from buildbot_farm import db
from buildbot_farm.dashboard import _pages as pages
from buildbot_farm.dashboard._builds import BuildLinks
from buildbot_farm.dashboard._jobs import JOBS_PAGE_SIZE, jobs_body
from buildbot_farm.ondemand.store import Artifact, JobTable

JOBS = JOBS_PAGE_SIZE
PAGES = 100
ROUNDS = 3
API = "/plugins/farm/api/"
FRAME = pages.Frame("/plugins/farm/ui/", "jobs")


class MemoryData:
    """Buildbot's data API for the builds the jobs name, answered from memory."""

    async def get(self, path: tuple[Any, ...], filters: Any = None) -> Any:
        """The build or builder at ``path``, like ``master.data.get``."""
        if path[0] == "builds":
            return {"builderid": 1, "number": path[1] - 1000, "complete": True}
        return {"name": "tool"}


async def fill(jobs: JobTable) -> None:
    """``JOBS`` jobs, each failed once, then built."""
    for number in range(JOBS):
        key = f"{number:064x}"
        await jobs.submit(key, "tool", json.dumps({"os": "linux", "plugins": ["a@1", "b@2"]}))
        await jobs.started(key, 1, 1000 + 2 * number, "worker-1")
        await jobs.finish(key, 1, "failure", None, "the compiler <crashed>")
        await jobs.submit(key, "tool", json.dumps({"os": "linux", "plugins": ["a@1", "b@2"]}))
        await jobs.started(key, 2, 1001 + 2 * number, "worker-2")
        await jobs.finish(key, 2, "success", Artifact(f"bin/tool/{key}/tool", "http://x/y",
                                                      12345678, "0" * 64), None)


async def farm_page(jobs: JobTable) -> bytes:
    """The page as the dashboard serves it."""
    links = BuildLinks(type("Master", (), {"data": MemoryData()})(), "/")
    body, _ = await jobs_body(type("Host", (), {"jobs": jobs})(), links, API)
    return pages.page(FRAME, "On-demand jobs", body)


async def reference_page(jobs: JobTable) -> bytes:
    """The same reads, the same table, joined from f-strings."""
    data, cells = MemoryData(), []
    for job in await jobs.recent(JOBS_PAGE_SIZE):
        tries = []
        for row in await jobs.attempts(job.key):
            build = await data.get(("builds", row["build_id"]))
            builder = await data.get(("builders", build["builderid"]))
            link = (f'<a href="/#/builders/{build["builderid"]}/builds/{build["number"]}"'
                    f' target="_top" class="build">{html.escape(builder["name"])}'
                    f' #{build["number"]}</a>')
            error = row["error"]
            tries.append(f'<span class="attempt">#{row["attempt"]} on'
                         f' {html.escape(row["worker"])} {html.escape(row["result"])} · {link}'
                         + (f' <span class="error-text">{html.escape(error)}</span>'
                            if error else "") + "</span>")
        values = json.loads(job.parameters)
        parameters = "<br>".join(
            f"<code>{html.escape(name)}={html.escape(','.join(map(str, value)))}</code>"
            for name, value in sorted(values.items()))
        artifact = job.artifact
        download = "" if artifact is None else (
            f'<a href="{API}download/{quote(job.key, safe="")}">download</a><br>'
            f"<code>{html.escape(artifact.path)}</code> {pages.size(artifact.size)}")
        cells.append(
            f'<tr><td><a href="{API}build/{quote(job.key, safe="")}" class="key"'
            f' title="{html.escape(job.key)}"><code>{html.escape(job.key[:12])}</code></a></td>'
            f"<td>{html.escape(job.scheduler)}</td><td>{parameters}</td>"
            f"<td>{html.escape(job.status)}</td><td>{'<br>'.join(tries)}</td>"
            f"<td>{download}</td></tr>")
    return ("<!DOCTYPE html><html><head><title>Farm: On-demand jobs</title></head><body>"
            "<table id=\"jobs\">" + "".join(cells) + "</table></body></html>\n").encode()


async def per_page(make: Callable[[], Awaitable[bytes]]) -> tuple[float, float]:
    """Wall and CPU seconds per page, over ``PAGES`` pages."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(PAGES):
        await make()
    return (time.perf_counter() - wall) / PAGES, (time.process_time() - cpu) / PAGES


async def measure(reactor: Any) -> None:
    """Fill the database, measure both pages in turn ``ROUNDS`` times, print the table."""
    database = await db.connect("sqlite://", reactor)
    try:
        jobs = JobTable(database, reactor.seconds, "bench")
        await fill(jobs)
        sides = {"farm (Jinja2)": lambda: farm_page(jobs),
                 "reference (f-strings)": lambda: reference_page(jobs)}
        sizes = {name: len(await make()) for name, make in sides.items()}
        rounds = [{name: await per_page(make) for name, make in sides.items()}
                  for _ in range(ROUNDS)]
    finally:
        await database.stop()
    print(f"On-demand jobs page, {JOBS} jobs x 2 attempts, {PAGES} pages a figure,"
          f" {ROUNDS} rounds taken in turn; page sizes {sizes}")
    print(f"{'page':<24}{'wall ms median (range)':>26}{'CPU ms median (range)':>26}")
    for name in sides:
        walls = sorted(r[name][0] * 1000 for r in rounds)
        cpus = sorted(r[name][1] * 1000 for r in rounds)
        print(f"{name:<24}{_span(walls, '.2f'):>26}{_span(cpus, '.2f'):>26}")
    farm, ref = sides
    walls = sorted(r[farm][0] / r[ref][0] for r in rounds)
    cpus = sorted(r[farm][1] / r[ref][1] for r in rounds)
    print(f"farm / reference: wall {_span(walls, '.2f')}, CPU {_span(cpus, '.2f')}")
    print(json.dumps(rounds))


def _span(values: list[float], spec: str) -> str:
    return (f"{format(statistics.median(values), spec)}"
            f" ({format(values[0], spec)}-{format(values[-1], spec)})")


def main() -> None:
    """Run :func:`measure` on a reactor."""
    task.react(lambda reactor: defer.ensureDeferred(measure(reactor)))
