"""What Buildbot's force form sends an ``OnDemandScheduler`` and the answer it needs back.

The web UI's dialog sends every field of the form: the parameters, and the fields every
Buildbot force form has (who asks, why, at what priority, and the source fields of its
hidden codebase). It closes only on the answer ``ForceScheduler.force()`` gives,
``(buildset id, {builder id: build request id})``, and then shows that build request,
which leads on to its build.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from buildbot.data import resultspec

from buildbot_farm.ondemand.store import ATTEMPT_PROPERTY, KEY_PROPERTY

# (buildset id, {builder id: build request id}), as ForceScheduler.force() answers.
ForceAnswer = tuple[int, dict[int, int]]
# Fields of every force form that say who asks, why and how urgently: they never change
# what is built, so they are no part of the key (a new build records them).
REQUEST_FIELDS = frozenset({"owner", "username", "reason", "priority"})
# The source fields of the form's hidden codebase: the form always sends them, empty.
SOURCE_FIELDS = frozenset({"branch", "revision", "repository", "project"})


@dataclass(frozen=True)
class FormRequest:
    """Who forced a build, why, and at what priority: recorded on a new build only."""

    owner: str
    reason: str
    priority: int


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [""] or value == []


def build_arguments(declared: Iterable[str], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of ``kwargs`` that are about the build: the declared parameters and
    anything unknown (which normalisation then refuses by name).

    Left out: the request fields, and source fields the form sent empty. A non-empty
    ``branch`` or ``revision`` stays in, so it is refused, never silently dropped.
    """
    names = set(declared)
    return {
        name: value for name, value in kwargs.items()
        if name in names or not (
            name in REQUEST_FIELDS or (name in SOURCE_FIELDS and _empty(value)))
    }


def _property(properties: Mapping[str, Any] | None, name: str) -> Any:
    value = (properties or {}).get(name)
    return value[0] if isinstance(value, (list, tuple)) else None


async def carries(master: Any, buildset_id: int, key: str, attempt: int) -> bool:
    """Whether Buildbot's buildset ``buildset_id`` is the one of ``key``'s ``attempt``.

    The farm database may outlive Buildbot's (or be shared by masters with their own),
    so an id alone could name somebody else's buildset.
    """
    properties = await master.data.get(("buildsets", buildset_id, "properties"))
    return (_property(properties, KEY_PROPERTY) == key
            and _property(properties, ATTEMPT_PROPERTY) == attempt)


async def requests_of(master: Any, buildset_id: int) -> ForceAnswer | None:
    """The force answer for Buildbot's buildset ``buildset_id``; None when it has no requests."""
    rows = await master.data.get(
        ("buildrequests",), filters=[resultspec.Filter("buildsetid", "eq", [buildset_id])]
    )
    brids = {int(r["builderid"]): int(r["buildrequestid"]) for r in rows or []}
    return (buildset_id, brids) if brids else None


async def producing_request(
    master: Any, key: str, attempt: int, buildset_id: int | None, build_id: int | None
) -> ForceAnswer | None:
    """The force answer that leads to the build that made ``key``'s artifact (the build's
    own request, so the UI opens that build), or to its attempt's buildset; None when
    Buildbot no longer knows either."""
    build = None if build_id is None else await master.data.get(("builds", build_id))
    if build is not None and build.get("buildrequestid") is not None:
        request = await master.data.get(("buildrequests", build["buildrequestid"]))
        if request is not None and await carries(master, request["buildsetid"], key, attempt):
            return (int(request["buildsetid"]),
                    {int(request["builderid"]): int(request["buildrequestid"])})
    if buildset_id is not None and await carries(master, buildset_id, key, attempt):
        return await requests_of(master, buildset_id)
    return None
