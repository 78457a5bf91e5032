"""Where files go: input mappings, output patterns and their checks (pure logic).

Worker paths are relative to the step's build directory; container paths are absolute.
A mapping ties one worker path to one container path; changed files come back only from
under a mapped container path, to the matching place under the worker path.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from buildbot_farm.remote.paths import UnsafePath, safe_member_path

CONTROL_DIR = "/.farm"
OUTPUTS_FILE = f"{CONTROL_DIR}/outputs"


class PathProblem(ValueError):
    """A path argument is unusable; the message names it and says why."""


def worker_path(path: str) -> str:
    """Return a worker path cleaned, ``.`` for the build directory itself.

    Raises PathProblem when it is absolute or climbs out of the build directory.
    """
    if not isinstance(path, str) or not path.strip():
        raise PathProblem(f"the worker path {path!r} is not a non-empty string")
    if path.startswith("/") or path.startswith("~") or re.match(r"^[A-Za-z]:", path):
        raise PathProblem(
            f"the worker path {path!r} is absolute; give it relative to the build directory"
        )
    cleaned = posixpath.normpath(path.replace("\\", "/"))
    if cleaned == ".":
        return "."
    try:
        return safe_member_path(cleaned)
    except UnsafePath as error:
        raise PathProblem(f"the worker path {path!r} escapes the build directory") from error


def container_path(path: str) -> str:
    """Return an absolute container path cleaned; raise PathProblem if it is unusable."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise PathProblem(f"the container path {path!r} must be absolute")
    if "\x00" in path:
        raise PathProblem(f"the container path {path!r} contains a NUL byte")
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = cleaned[1:]
    if cleaned == "/":
        raise PathProblem("the container path '/' is the whole file system; map a directory")
    if is_under(cleaned, CONTROL_DIR):
        raise PathProblem(f"the container path {path!r} is reserved for the farm")
    return cleaned


def is_under(path: str, parent: str) -> bool:
    """Whether absolute ``path`` is ``parent`` or inside it."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")


@dataclass(frozen=True)
class InputMap:
    """The checked input mapping: (worker path, container path) pairs, none nested."""

    pairs: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, inputs: Mapping[str, str] | None, workdir: str) -> InputMap:
        """Check a user's mapping; ``None`` maps the whole build directory to ``workdir``."""
        if inputs is None:
            return cls(((".", container_path(workdir)),))
        if not isinstance(inputs, Mapping):
            raise PathProblem(
                f"inputs must be a dict of worker path -> container path, not {inputs!r}"
            )
        pairs = tuple(sorted((worker_path(w), container_path(c)) for w, c in inputs.items()))
        containers = sorted(c for _, c in pairs)
        for first, second in zip(containers, containers[1:]):
            if is_under(second, first):
                raise PathProblem(
                    f"the container paths {first!r} and {second!r} overlap; map each place once"
                )
        workers = sorted(w for w, _ in pairs)
        for first, second in zip(workers, workers[1:]):
            if first == "." or is_under("/" + second, "/" + first):
                raise PathProblem(
                    f"the worker paths {first!r} and {second!r} overlap; map each place once"
                )
        return cls(pairs)

    @property
    def container_roots(self) -> list[str]:
        """The mapped container paths."""
        return [c for _, c in self.pairs]

    def to_worker(self, path: str) -> str | None:
        """The worker path for container ``path``, or None if no mapping covers it."""
        for worker, container in self.pairs:
            if is_under(path, container):
                rest = path[len(container) :].lstrip("/")
                if worker == ".":
                    return rest or "."
                return f"{worker}/{rest}" if rest else worker
        return None


class OutputFilter:
    """Which changed container paths come back: glob patterns, all under the mappings if none.

    ``*`` and ``?`` match within one path component, ``**`` any number of components
    (``/out/**`` matches ``/out`` and everything below it).
    """

    def __init__(self, patterns: Iterable[str] | None, inputs: InputMap) -> None:
        self.patterns = list(patterns) if patterns is not None else []
        roots = inputs.container_roots
        for pattern in self.patterns:
            if not isinstance(pattern, str) or not pattern.startswith("/"):
                raise PathProblem(f"the outputs pattern {pattern!r} must be an absolute path")
            fixed = _fixed_prefix(pattern)
            if not any(is_under(fixed, r) or is_under(r, fixed) for r in roots):
                raise PathProblem(
                    f"the outputs pattern {pattern!r} matches nothing under the mapped container"
                    f" paths ({', '.join(roots)}): only files there can come back"
                )
        self._regex = re.compile("|".join(_glob_regex(p) for p in self.patterns) or "(?!)")

    def __call__(self, path: str) -> bool:
        """Whether container ``path`` is an output."""
        if not self.patterns:
            return True
        return self._regex.fullmatch(path) is not None

    def places(self, roots: Iterable[str]) -> list[str]:
        """The paths under ``roots`` below which every output lies: ``roots`` themselves
        without patterns, else each pattern's part before its first wildcard (within a root),
        none inside another."""
        roots = list(roots)
        found = set(roots) if not self.patterns else set()
        for pattern in self.patterns:
            fixed = _fixed_prefix(pattern)
            found.update(fixed if is_under(fixed, root) else root
                         for root in roots if is_under(fixed, root) or is_under(root, fixed))
        return [p for p in sorted(found) if not any(q != p and is_under(p, q) for q in found)]


def _fixed_prefix(pattern: str) -> str:
    parts = []
    for part in pattern.split("/"):
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return posixpath.normpath("/".join(parts) or "/")


def _glob_regex(pattern: str) -> str:
    out = []
    parts = posixpath.normpath(pattern).split("/")[1:]
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            out.append("(?:/.*)?" if last else "(?:/[^/]+)*")
            continue
        piece = "".join(
            "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part
        )
        out.append("/" + piece)
    return "(?:" + "".join(out) + ")"
