"""The Artifacts page: collections, sizes, sha256 and downloads; builds holding upload tokens."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from markupsafe import Markup

from buildbot_farm.artifacts import paths
from buildbot_farm.dashboard import _pages as pages
from buildbot_farm.dashboard._builds import BuildLinks
from buildbot_farm.web import ApiError

ARTIFACTS_CFG = "util.FarmService(artifacts=util.ArtifactRepository())"


async def live_tokens_section(
    repository: Any, links: BuildLinks, now: float
) -> tuple[Markup, bool]:
    """HTML of the builds that still hold a live upload token, and whether there are any.

    Shows the build, its scope and expiry; the token itself is never stored, so never shown.
    """
    live = await repository.index.live_tokens()
    tokens = [(token, await links.link(token.build_id)) for token in live]
    return pages.render("tokens.html", tokens=tokens, now=now), bool(live)


async def artifacts_page(
    repository: Any, rest: list[str], frame: pages.Frame, links: BuildLinks, now: float
) -> bytes:
    """The page of the collection ``rest``; it reloads itself while a token is live."""
    if repository is None:
        return pages.page(frame, "Artifacts", pages.empty_state(
            "This farm has no artifact repository.", ARTIFACTS_CFG))
    try:
        segments = tuple(paths.check_segment(s) for s in rest)
    except ValueError as e:
        raise ApiError(400, f"not an artifact path: {e}") from e
    entry = await repository.stat(segments) if segments else None
    if segments and (entry is None or not entry.is_dir):
        raise ApiError(404, f"no artifact collection /{paths.join(segments)}/")
    entries = sorted(await repository.list(segments), key=lambda e: (not e.is_dir, e.name))
    digests = {d.entry.name: d.sha256 for d in await repository.describe(segments, entries)}
    urls = {e.name: repository.url_for((*segments, e.name)) for e in entries if not e.is_dir}
    tokens, busy = await live_tokens_section(repository, links, now)
    body = pages.render(
        "artifacts.html", entries=entries, segments=segments, digests=digests, urls=urls,
        here=frame.base + "artifacts/" + "".join(quote(s, safe="") + "/" for s in segments),
        tokens=Markup() if segments else tokens)
    return pages.page(frame, f"Artifacts /{paths.join(segments)}", body,
                      refresh=pages.REFRESH_SECONDS if busy else 0)
