"""The Artifacts page: collections, sizes, sha256 and downloads; builds holding upload tokens."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from buildbot_farm.artifacts import paths
from buildbot_farm.dashboard import _pages as pages
from buildbot_farm.dashboard._builds import BuildLinks

ARTIFACTS_CFG = "util.FarmService(artifacts=util.ArtifactRepository())"


async def live_tokens_section(repository: Any, links: BuildLinks, now: float) -> tuple[str, bool]:
    """HTML of the builds that still hold a live upload token, and whether there are any.

    Shows the build, its scope and expiry; the token itself is never stored, so never shown.
    """
    live = await repository.index.live_tokens()
    heading = "<h2>Builds holding a live upload token</h2>"
    if not live:
        return heading + ('<p class="empty" id="no-tokens">No build holds a live upload'
                          " token.</p>"), False
    rows = [
        (await links.link(token.build_id), str(token.build_id),
         f"<code>/{pages.esc(token.scope)}/</code>", pages.esc(token.master),
         pages.esc(pages.countdown(token.expires_at, now)))
        for token in live
    ]
    return heading + pages.table(("build", "build id", "scope", "master", "expires"), rows,
                                 "tokens"), True


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
        raise pages.PageError(400, f"not an artifact path: {e}") from e
    entry = await repository.stat(segments) if segments else None
    if segments and (entry is None or not entry.is_dir):
        raise pages.PageError(404, f"no artifact collection /{paths.join(segments)}/")
    entries = await repository.list(segments)
    digests = {d.entry.name: d.sha256 for d in await repository.describe(segments, entries)}
    here = frame.base + "artifacts/" + "".join(quote(s, safe="") + "/" for s in segments)
    rows = []
    if segments:
        rows.append((pages.link(here + "../", "../"), "", "", ""))
    for item in sorted(entries, key=lambda e: (not e.is_dir, e.name)):
        if item.is_dir:
            rows.append((pages.link(here + quote(item.name, safe="") + "/", item.name + "/"),
                         "", "", ""))
        else:
            url = repository.url_for((*segments, item.name))
            rows.append((pages.esc(item.name), pages.esc(pages.size(item.size)),
                         f"<code>{pages.esc(digests.get(item.name, ''))}</code>",
                         pages.link(url, "download")))
    if not entries and not segments:
        body = ('<p class="empty">No artifacts yet. A build uploads them with'
                " <code>steps.ArtifactUpload(workersrc=\"dist/app.tar.gz\")</code>.</p>")
    else:
        body = pages.table(("name", "size", "sha256", ""), rows, "artifacts")
    tokens, busy = await live_tokens_section(repository, links, now)
    if not segments:
        body += tokens
    return pages.page(frame, f"Artifacts /{paths.join(segments)}", body,
                      refresh=pages.REFRESH_SECONDS if busy else 0)
