"""The HTML of the farm's dashboard pages: Jinja2 templates (``templates/``, package data)
rendered with autoescaping from plain values; no twisted.web here.

Every page shares one frame (``page.html``): a tab bar, a heading, and an optional
``<meta http-equiv="refresh">`` while something is in progress. A page's body is its own
template rendered by :func:`render`; a value is escaped unless it is already rendered
(:class:`markupsafe.Markup`, what :func:`render` returns). Nothing here runs JavaScript,
so the pages work inside the web UI's iframe under any content policy.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup

TABS = (("buildlets", "Buildlets"), ("artifacts", "Artifacts"), ("records", "Records"),
        ("jobs", "On-demand jobs"))
REFRESH_SECONDS = 5
# Records appear only when a build ends; a slower reload leaves time to type a search.
RECORDS_REFRESH_SECONDS = 30


@dataclass(frozen=True)
class Frame:
    """Where a page sits: the dashboard's base URL (ending in ``/``) and its tab."""

    base: str
    tab: str


def render(template: str, **context: Any) -> Markup:
    """The template ``template`` (a file in ``templates/``) rendered with ``context``."""
    return Markup(_ENVIRONMENT.get_template(template).render(**context))


def page(frame: Frame, title: str, body: Markup, refresh: int = 0) -> bytes:
    """A whole dashboard page; with ``refresh`` > 0 it reloads itself every that many seconds.

    ``title`` is the page's heading; the browser's title adds "Farm: " before it.
    """
    return (render("page.html", frame=frame, tabs=TABS, title=title, body=body,
                   refresh=int(refresh)) + "\n").encode()


def message(kind: str, text: str) -> Markup:
    """A readable ``"error"`` (an alert) or ``"notice"`` (a confirmation) in a page."""
    return render("message.html", kind=kind, message=text)


def empty_state(what: str, config_lines: str) -> Markup:
    """What to put in master.cfg to get ``what`` going."""
    return render("empty_state.html", what=what, config_lines=config_lines)


def when(seconds: float | None) -> str:
    """A moment as UTC ``YYYY-MM-DD HH:MM:SS``; empty for None."""
    if seconds is None:
        return ""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def countdown(moment: float | None, now: float) -> str:
    """How long until ``moment`` ("in 4 min 2 s", "in 5 h 59 min"), or "expired"; empty for None."""
    if moment is None:
        return ""
    left = int(moment - now)
    if left <= 0:
        return "expired"
    minutes, seconds = divmod(left, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"in {hours} h {minutes} min"
    return f"in {minutes} min {seconds} s" if minutes else f"in {seconds} s"


def size(count: int) -> str:
    """A byte count for people (``1.5 KiB``)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("buildbot_farm.dashboard", "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined, auto_reload=False,
)
_ENVIRONMENT.filters.update(when=when, countdown=countdown, size=size,
                            quote=lambda text: quote(str(text), safe=""))
