"""Buildbot's builds as the dashboard shows them: links into Buildbot's web UI, builds running."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from buildbot.data import resultspec


@dataclass(frozen=True)
class BuildRef:
    """A Buildbot build as its web UI addresses it."""

    build_id: int
    builder: str
    builderid: int
    number: int


@dataclass(frozen=True)
class BuildLink:
    """A link to a build's page (``ref`` None: Buildbot does not know the build)."""

    build_id: int
    ref: BuildRef | None
    url: str


class BuildLinks:
    """Looks builds up in Buildbot's data API (once per page) and links to them.

    ``ui_root`` is the web UI's root as seen from the dashboard (``/`` when the dashboard
    is at ``/plugins/farm/ui/``). Links open in the whole window, not in the Farm iframe.
    """

    def __init__(self, master: Any, ui_root: str) -> None:
        self._master = master
        self._root = ui_root
        self._found: dict[int, BuildRef | None] = {}
        self._builders: dict[int, str] = {}

    async def find(self, build_id: int) -> BuildRef | None:
        """The build with Buildbot's id ``build_id``, or None when Buildbot has none."""
        if build_id not in self._found:
            build = await self._master.data.get(("builds", build_id))
            ref = None
            if build:
                builderid = int(build["builderid"])
                if builderid not in self._builders:
                    builder = await self._master.data.get(("builders", builderid))
                    self._builders[builderid] = builder["name"] if builder else f"#{builderid}"
                ref = BuildRef(build_id, self._builders[builderid], builderid,
                               int(build["number"]))
            self._found[build_id] = ref
        return self._found[build_id]

    async def link(self, build_id: int | None) -> BuildLink | None:
        """What the ``build_link`` macro shows: ``BUILDER #NUMBER`` linking to the build's
        page, or the bare id of a build Buildbot does not know; None for no build."""
        if build_id is None:
            return None
        ref = await self.find(int(build_id))
        url = "" if ref is None else f"{self._root}#/builders/{ref.builderid}/builds/{ref.number}"
        return BuildLink(int(build_id), ref, url)

    async def any_running(self) -> bool:
        """Whether Buildbot has a build in progress (on any master of this database)."""
        running = await self._master.data.get(
            ("builds",), filters=[resultspec.Filter("complete", "eq", [False])])
        return bool(running)
