"""Path safety (buildbot_farm.remote.paths), the one check both sides use, imported directly."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from buildbot_farm.remote.errors import AgentError
from buildbot_farm.remote.paths import (
    UnsafePath,
    Workdir,
    check_segment,
    link_stays_inside,
    relative_parts,
    safe_member_path,
)


@pytest.mark.parametrize(("path", "parts"), [
    ("a/b", ["a", "b"]), ("./a//b/", ["a", "b"]), ("", []), (".", []), ("a/./b/.", ["a", "b"]),
    ("..a/b..", ["..a", "b.."]),
])
def test_relative_parts_drop_empty_and_dot_components(path: str, parts: list[str]) -> None:
    """Empty and ``.`` components go; names that merely contain dots stay."""
    assert relative_parts(path) == parts


@pytest.mark.parametrize(("path", "reason"), [
    ("/etc/passwd", "is absolute"), ("a/../../b", "contains '..'"), ("..", "contains '..'"),
    ("a\x00b", "contains a NUL byte"),
])
def test_relative_parts_refuse_what_could_climb_out(path: str, reason: str) -> None:
    """Absolute paths, ``..`` anywhere and NUL bytes are refused, saying which and why."""
    with pytest.raises(UnsafePath, match=re.escape(reason)) as refused:
        relative_parts(path, "member 'x': path")
    assert str(refused.value).startswith(f"member 'x': path {path!r} ")


@pytest.mark.parametrize(("name", "reason"), [
    ("", "names the destination itself"), ("./", "names the destination itself"),
    ("a\\b", "contains a backslash"), ("../x", "contains '..'"), ("/x", "is absolute"),
])
def test_member_paths_are_stricter(name: str, reason: str) -> None:
    """Archive members also may not be empty or hold backslashes (a Windows separator)."""
    with pytest.raises(UnsafePath, match=re.escape(reason)):
        safe_member_path(name)


def test_member_paths_come_back_clean() -> None:
    """A member path is returned without empty and ``.`` components."""
    assert safe_member_path("./out//lib/./x.so") == "out/lib/x.so"


@pytest.mark.parametrize("segment", ["", ".", "..", "a/b", "a\\b", "a\x00", "tab\there", "\x7f"])
def test_a_segment_is_one_plain_file_name(segment: str) -> None:
    """A segment is one file name: no separators, no dot names, no control characters."""
    with pytest.raises(UnsafePath):
        check_segment(segment)
    assert check_segment("v1.0_final-2") == "v1.0_final-2"


@pytest.mark.parametrize(("member", "target", "inside"), [
    ("a/l", "../b", True), ("a/l", "../../b", False), ("l", "x/../../y", False),
    ("a/b/l", "../../c/./d", True), ("l", "/etc", False), ("l", "", False),
])
def test_links_stay_inside_only_when_they_never_climb_above_the_root(
    member: str, target: str, inside: bool,
) -> None:
    """A relative link target is inside while it never climbs above the destination."""
    assert link_stays_inside(member, target) is inside


def test_the_workdir_resolves_inside_and_refuses_links_out(tmp_path: Path) -> None:
    """Paths resolve under the workdir; one that leaves it through a symlink is a 400."""
    (tmp_path / "work").mkdir()
    os.symlink(tmp_path, tmp_path / "work" / "up")
    workdir = Workdir(str(tmp_path / "work"))
    assert workdir.resolve("a/./b") == str(tmp_path / "work" / "a" / "b")
    assert workdir.resolve(".") == workdir.root
    assert workdir.resolve("up", follow_last=False) == str(tmp_path / "work" / "up")
    with pytest.raises(AgentError, match="leads outside the workdir") as refused:
        workdir.resolve("up/secret")
    assert refused.value.status == 400
    with pytest.raises(AgentError, match=r"contains '\.\.'; give a path relative") as climbing:
        workdir.resolve("a/../..")
    assert climbing.value.status == 400
