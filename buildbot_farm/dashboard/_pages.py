"""The HTML of the farm's dashboard pages: pure functions of plain values, no twisted.web.

Every page shares one frame (:func:`page`): a tab bar, a heading, and an optional
``<meta http-equiv="refresh">`` while something is in progress. Nothing here runs
JavaScript, so the pages work inside the web UI's iframe under any content policy.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TABS = (("buildlets", "Buildlets"), ("artifacts", "Artifacts"), ("records", "Records"),
        ("jobs", "On-demand jobs"))
REFRESH_SECONDS = 5
# Records appear only when a build ends; a slower reload leaves time to type a search.
RECORDS_REFRESH_SECONDS = 30

_STYLE = """
body{font-family:sans-serif;margin:1em;color:#222}
nav a{margin-right:1em;padding:.3em .6em;text-decoration:none;border-radius:4px}
nav a.current{background:#2a6ebb;color:#fff}
table{border-collapse:collapse;margin-top:1em}
th,td{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left}
code{font-size:90%}
.error{background:#fdecea;border:1px solid #e0a0a0;padding:.8em}
.empty{background:#f4f7fb;border:1px solid #c8d6e8;padding:.8em}
.notice{background:#eaf6ea;border:1px solid #9c9;padding:.8em}
.error-text{color:#a33}
"""


class PageError(Exception):
    """A request the dashboard answers with a readable error page and ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Frame:
    """Where a page sits: the dashboard's base URL (ending in ``/``) and its tab."""

    base: str
    tab: str


def esc(value: object) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def page(frame: Frame, title: str, body: str, refresh: int = 0) -> bytes:
    """A whole dashboard page; with ``refresh`` > 0 it reloads itself every that many seconds.

    ``title`` is the page's heading; the browser's title adds "Farm: " before it.
    """
    current = ' class="current" aria-current="page"'
    tabs = "".join(
        f'<a href="{esc(frame.base + name)}"{current if name == frame.tab else ""}>'
        f"{esc(caption)}</a>"
        for name, caption in TABS
    )
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh > 0 else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"{meta}<title>Farm: {esc(title)}</title><style>{_STYLE}</style>"
        '<link rel="icon" href="data:,"></head>'
        f"<body><nav>{tabs}</nav><h1>{esc(title)}</h1>{body}</body></html>\n"
    ).encode()


def error_box(message: str) -> str:
    """A readable error message in a page."""
    return f'<p class="error" role="alert">{esc(message)}</p>'


def notice_box(message: str) -> str:
    """A readable confirmation in a page."""
    return f'<p class="notice" role="status">{esc(message)}</p>'


def empty_state(what: str, config_lines: str) -> str:
    """What to put in master.cfg to get ``what`` going."""
    return (
        f'<div class="empty"><p>{esc(what)} Add this to master.cfg and restart the master:</p>'
        f"<pre>{esc(config_lines)}</pre></div>"
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], css_id: str) -> str:
    """A table whose cells are already HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in rows)
    return f'<table id="{esc(css_id)}"><tr>{head}</tr>{body}</table>'


def link(url: str, text: str) -> str:
    """An ``<a>`` element."""
    return f'<a href="{esc(url)}">{esc(text)}</a>'


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
