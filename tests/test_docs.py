"""The documentation's relative links resolve (the docs are checked Markdown)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(markdown: str) -> set[str]:
    """The anchors of the Markdown headings in ``markdown``: lower case, only letters, digits,
    space, _ and - kept, spaces made hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


def test_every_relative_link_in_the_docs_resolves() -> None:
    """Each relative link in README.md and docs/ names an existing file (and heading)."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]:
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve()
            if not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and anchor not in heading_anchors(resolved.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_the_readme_and_the_index_list_every_docs_page() -> None:
    """README.md's documentation list and docs/index.md link every page under docs/."""
    pages = {p for p in (ROOT / "docs").glob("*.md") if p.name != "index.md"}
    for listing in (ROOT / "README.md", ROOT / "docs/index.md"):
        linked = {(listing.parent / target.partition("#")[0]).resolve()
                  for target in LINK.findall(listing.read_text())}
        assert sorted(p.name for p in pages - linked) == [], f"not linked from {listing.name}"
