"""``farm-remote.pyz unpack``: a task's changes applied on the worker, all checked first."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from buildbot_farm.remote import unpack
from buildbot_farm.remote.whole_files import SMALL, unnamed_files_work
from tests.containers.test_pure import make_tar


def run_unpack(tmp_path: Path, archive: bytes, manifest: dict) -> int:
    """Run the worker's unpacker on ``archive`` (compressed with zstd) and ``manifest`` into
    ``tmp_path``/dest; its exit code."""
    (tmp_path / "a.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(archive))
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    dest = tmp_path / "dest"
    dest.mkdir(exist_ok=True)
    return unpack.main([str(tmp_path / "a.tar.zst"), str(tmp_path / "m.json"), str(dest)])


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "a/../../evil"])
def test_unpack_refuses_escaping_names_and_writes_nothing(tmp_path: Path, name: str) -> None:
    """A member named outside the destination is refused before anything is written."""
    archive = make_tar(("ok", b"fine"), (name, b"evil"), fmt=tarfile.GNU_FORMAT)
    manifest = {"files": [{"path": "ok", "type": "file"}, {"path": name, "type": "file"}],
                "deleted": []}
    assert run_unpack(tmp_path, archive, manifest) == unpack.REFUSED
    assert list((tmp_path / "dest").iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_unpack_refuses_writing_through_symlinks(tmp_path: Path) -> None:
    """Neither a symlink in the destination nor one made by the archive is written through."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "dest").mkdir()
    os.symlink(outside, tmp_path / "dest" / "out")
    manifest: dict[str, Any] = {"files": [{"path": "out/x", "type": "file"}], "deleted": []}
    assert run_unpack(tmp_path, make_tar(("out/x", b"x")), manifest) == unpack.REFUSED
    manifest = {"files": [], "deleted": ["out/secret"]}
    (outside / "secret").write_text("keep")
    assert run_unpack(tmp_path, make_tar(), manifest) == unpack.REFUSED
    assert (outside / "secret").exists()
    made = {"files": [{"path": "l", "type": "symlink", "target": "d"},
                      {"path": "l/x", "type": "file"}], "deleted": []}
    assert run_unpack(tmp_path, make_tar(("l", "->d"), ("l/x", b"x")), made) == unpack.REFUSED
    assert list(outside.iterdir()) == [outside / "secret"]


def test_unpack_applies_files_links_and_deletions(tmp_path: Path) -> None:
    """A good archive is written in place, links kept as links, deletions done."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old").write_text("old")
    manifest = {"files": [{"path": "d", "type": "dir"}, {"path": "d/f", "type": "file"},
                          {"path": "d/l", "type": "symlink", "target": "f"}], "deleted": ["old"]}
    archive = make_tar(("d", None), ("d/f", b"data"), ("d/l", "->f"))
    assert run_unpack(tmp_path, archive, manifest) == 0
    assert (dest / "d/f").read_bytes() == b"data"
    assert os.readlink(dest / "d/l") == "f"
    assert not (dest / "old").exists()


@pytest.mark.parametrize("threads", [True, False], ids=["whole-files", "partials"])
def test_unpack_replaces_dirs_links_and_leftovers_without_following_links(
    tmp_path: Path, threads: bool
) -> None:
    """A file replaces a directory or a link of the same name (never writing through the
    link); a partial file left by an earlier unpack (here a link pointing outside) is never
    written through (a file written by name replaces it); files in many directories, small
    and large, all get their data, mode and time."""
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    (dest / "was-a-dir" / "inner").mkdir(parents=True)
    outside.write_text("keep")
    os.symlink(outside, dest / "f.farm-partial")
    os.symlink(outside, dest / "was-a-link")
    names = ["was-a-dir", "was-a-link", "f", *(f"n{i % 7}/m{i % 3}/x{i}" for i in range(300))]
    data = {name: name.encode() for name in names}
    data["n0/m0/x0"] = os.urandom(SMALL + 1)  # written by name, past the threads' limit
    archive = make_tar(*data.items(), mtimes={name: 1_000_000 for name in names})
    assert unpack.extract(str(dest), io.BytesIO(archive), set(names), threads) == (
        len(names), sum(map(len, data.values())))
    for name in names:
        assert (dest / name).read_bytes() == data[name]
        info = os.lstat(dest / name)
        assert stat.S_ISREG(info.st_mode)
        assert info.st_mtime == 1_000_000
        assert info.st_mode & 0o7777 == 0o644
    assert outside.read_text() == "keep"
    partials = [p.name for p in dest.rglob("*.farm-partial")]
    assert partials == (["f.farm-partial"] if threads else [])


def test_small_files_are_written_by_threads_where_linux_allows(tmp_path: Path) -> None:
    """On Linux small files are made without a name and named once whole."""
    assert unnamed_files_work(str(tmp_path)) is (sys.platform == "linux")


def test_a_hard_link_waits_for_its_target_and_errors_of_threads_are_reported(
    tmp_path: Path
) -> None:
    """A hard link to a file a thread writes finds it in place; a file a thread cannot
    write (its name too long) fails the unpacking, naming it, with no partial file left."""
    dest = tmp_path / "dest"
    dest.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"data"))
        link = tarfile.TarInfo("l")
        link.type, link.linkname = tarfile.LNKTYPE, "a"
        tar.addfile(link)
    assert unpack.extract(str(dest), io.BytesIO(buffer.getvalue()), {"a", "l"}) == (2, 4)
    assert os.stat(dest / "l").st_ino == os.stat(dest / "a").st_ino
    long_name = "x" * 300
    archive = make_tar(("b", b"fine"), (long_name, b"data"))
    with pytest.raises(OSError, match="File name too long"):
        unpack.extract(str(dest), io.BytesIO(archive), {"b", long_name})
    assert sorted(p.name for p in dest.iterdir()) == ["a", "b", "l"]


def test_an_archive_cut_in_a_file_leaves_no_partial_file(tmp_path: Path) -> None:
    """An archive that ends inside a member's data is unreadable (exit 3): the members
    before it are written, the one cut short leaves neither itself nor its partial file."""
    archive = make_tar(("a", b"complete"), ("b", b"x" * 5000))
    manifest = {"files": [{"path": "a", "type": "file"}, {"path": "b", "type": "file"}],
                "deleted": []}
    assert run_unpack(tmp_path, archive[:512 * 3 + 1000], manifest) == unpack.UNREADABLE
    dest = tmp_path / "dest"
    assert sorted(p.name for p in dest.iterdir()) == ["a"]
    assert (dest / "a").read_bytes() == b"complete"
