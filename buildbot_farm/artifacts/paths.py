"""Path safety and the repository layout; pure logic, no buildbot or twisted.web imports.

A repository path is a tuple of segments. Every path a client sends goes through
:func:`split_request_path` first, so nothing that could leave the repository's directory
(``..``, encoded slashes, backslashes, NUL, absolute paths) reaches the storage.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import unquote

from buildbot_farm.remote.paths import UnsafePath
from buildbot_farm.remote.paths import check_segment as check_name

__all__ = [
    "ANY_SEGMENT", "DEFAULT_LAYOUT", "RESERVED_PREFIX", "Segments", "UnsafePath", "check_segment",
    "join", "layout_problems", "render_layout", "scope_allows", "split", "split_request_path",
]

Segments = tuple[str, ...]

DEFAULT_LAYOUT = "{kind}/{project}/{build}"
# Names starting with this are the repository's own (temporary files, the auth endpoint).
RESERVED_PREFIX = ".farm"
# In a token's scope, this segment stands for any one segment (the kind of artifact).
ANY_SEGMENT = "*"
MAX_SEGMENT_BYTES = 255


def check_segment(segment: str) -> str:
    """Return ``segment`` if it is one safe file name of the repository, else raise
    :class:`UnsafePath` (the farm's one file-name check, then the repository's own rules)."""
    check_name(segment)
    if segment.startswith(RESERVED_PREFIX):
        raise UnsafePath(f"names starting with {RESERVED_PREFIX!r} are reserved")
    if len(segment.encode("utf-8", "surrogateescape")) > MAX_SEGMENT_BYTES:
        raise UnsafePath(
            f"path segment {segment[:40]!r}... is longer than {MAX_SEGMENT_BYTES} bytes"
        )
    return segment


def split_request_path(raw_segments: Sequence[bytes]) -> tuple[Segments, bool]:
    """Turn the raw (still percent-encoded) segments of a request path into safe segments.

    Returns the segments and whether the path ended in ``/`` (a collection). Each segment
    is decoded exactly once; a decoded ``/``, ``\\`` or ``..`` is refused, so encoded
    escapes cannot pass. Empty segments are refused except one at the end.
    """
    parts = list(raw_segments)
    trailing = bool(parts) and parts[-1] == b""
    if trailing:
        parts = parts[:-1]
    segments = []
    for raw in parts:
        try:
            text = unquote(raw.decode("ascii"), errors="strict")
        except UnicodeDecodeError as e:
            raise UnsafePath("request paths must be percent-encoded UTF-8") from e
        segments.append(check_segment(text))
    return tuple(segments), trailing


def join(segments: Iterable[str]) -> str:
    """The repository path of ``segments``, as stored in the index (``a/b/c``)."""
    return "/".join(segments)


def split(path: str) -> Segments:
    """The safe segments of a stored repository path ``a/b/c`` (leading/trailing ``/`` ok)."""
    stripped = path.strip("/")
    if not stripped:
        return ()
    return tuple(check_segment(part) for part in stripped.split("/"))


def render_layout(layout: str, values: Mapping[str, object]) -> Segments:
    """Fill the layout template (``{kind}/{project}/{build}``) and check every segment.

    A value may not contain ``/``: each placeholder fills part of one segment.
    """
    names = {name for _, name, _, _ in string.Formatter().parse(layout) if name}
    missing = sorted(names - set(values))
    if missing:
        raise UnsafePath(f"layout {layout!r} needs {', '.join(missing)}")
    for name in names:
        text = str(values[name])
        if "/" in text or "\\" in text:
            raise UnsafePath(f"layout value {name}={text!r} may not contain a slash")
    rendered = layout.format_map({k: str(v) for k, v in values.items()})
    return tuple(
        part if part == ANY_SEGMENT else check_segment(part) for part in rendered.split("/")
    )


def layout_problems(layout: object) -> list[str]:
    """What is wrong with a layout template; empty when it is usable."""
    if not isinstance(layout, str) or not layout.strip("/"):
        return [f"layout must be a non-empty template such as {DEFAULT_LAYOUT!r}"]
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(layout) if name}
    except ValueError as e:
        return [f"layout {layout!r} is not a valid template: {e}"]
    if "build" not in names:
        return [f"layout {layout!r} must contain {{build}}, so each build has its own prefix"]
    if layout.startswith("/") or layout.endswith("/"):
        return [f"layout {layout!r} must not start or end with '/'"]
    return []


def scope_allows(scope: Segments, segments: Segments) -> bool:
    """Whether ``segments`` is the scope's directory or inside it (``*`` matches one segment)."""
    if len(segments) < len(scope):
        return False
    return all(want in (ANY_SEGMENT, got) for want, got in zip(scope, segments))

