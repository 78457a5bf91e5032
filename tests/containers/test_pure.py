"""The pure parts of container tasks: tar streams, paths, outputs files (the worker's unpacker:
tests/remote/test_unpack.py)."""

from __future__ import annotations

import io
import tarfile
from typing import Literal

import pytest

from buildbot_farm.containers._transfer import owned_by_root
from buildbot_farm.remote import tar_stream
from buildbot_farm.remote.task_changes import (
    READ_BACK_LIMIT,
    SETTLED_SECONDS,
    Entry,
    InputRecord,
    Packer,
    UnsafeOutputs,
    plan_collection,
    plan_from_tars,
)
from buildbot_farm.remote.task_outputs import OutputsError, parse_outputs
from buildbot_farm.remote.task_paths import InputMap, OutputFilter, PathProblem, worker_path


def make_tar(
    *members: tuple[str, bytes | str | None],
    fmt: int = tarfile.PAX_FORMAT,
    mtimes: dict[str, int] | None = None,
) -> bytes:
    """A tar: (name, bytes) is a file, (name, None) a dir, (name, "->target") a symlink;
    each member modified at its time in ``mtimes`` (0 if not there)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.mtime = (mtimes or {}).get(name, 0)
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content[2:]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def events_of(data: bytes, size: int) -> list[tuple[str, str, bytes]]:
    """Each member TarReader finds in ``data`` fed ``size`` bytes at a time: its name, kind and
    body."""
    reader = tar_stream.TarReader()
    seen: list[tuple[str, str, bytes]] = []
    body = b""
    for start in range(0, len(data), size):
        for event in reader.feed(data[start : start + size]):
            if isinstance(event, tar_stream.Header):
                body = b""
            elif isinstance(event, tar_stream.Data):
                body += event.chunk
            else:
                seen.append((event.member.name, event.member.kind, body))
    reader.close()
    return seen


@pytest.mark.parametrize("chunk", [1, 7, 512, 100_000])
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_reader_gives_the_same_members_whatever_the_chunking(
    chunk: int, fmt: Literal[0, 1, 2]
) -> None:
    """Chunk sizes and tar dialects (long names included) do not change what is read."""
    long = "d/" + "n" * 90 + "/" + "f" * 60
    data = make_tar(("d", None), (long, b"x" * 1000), ("d/e", b""), ("d/l", "->e"), fmt=fmt)
    assert events_of(data, chunk) == [
        ("d", "dir", b""),
        (long, "file", b"x" * 1000),
        ("d/e", "file", b""),
        ("d/l", "symlink", b""),
    ]


def test_reader_refuses_a_truncated_stream() -> None:
    """A stream that stops inside a member is an error, not a short file."""
    data = make_tar(("a", b"y" * 2000))[:1200]
    reader = tar_stream.TarReader()
    reader.feed(data)
    with pytest.raises(tar_stream.TarError):
        reader.close()


@pytest.mark.parametrize(
    "path", ["/etc", "../x", "a/../../x", "~/x", "C:/x", ""]
)
def test_worker_paths_that_escape_are_refused(path: str) -> None:
    """Absolute worker paths and ones climbing out of the build directory are refused."""
    with pytest.raises(PathProblem):
        worker_path(path)


def test_mapping_round_trip_and_overlaps() -> None:
    """Container paths map back under their worker path; overlapping mappings are refused."""
    inputs = InputMap.parse({"src/": "/work/src", "VERSION": "/work/VERSION"}, "/work")
    assert inputs.to_worker("/work/src/out/a") == "src/out/a"
    assert inputs.to_worker("/work/VERSION") == "VERSION"
    assert inputs.to_worker("/etc/passwd") is None
    assert InputMap.parse(None, "/w").to_worker("/w/x") == "x"
    with pytest.raises(PathProblem, match="overlap"):
        InputMap.parse({"a": "/work", "b": "/work/b"}, "/work")
    with pytest.raises(PathProblem, match="reserved"):
        InputMap.parse({"a": "/.farm/x"}, "/work")


def test_output_patterns() -> None:
    """`**` spans directories, `*` stays in one; patterns outside every mapping are refused."""
    inputs = InputMap.parse({"src": "/work/src"}, "/work")
    accept = OutputFilter(["/work/src/out/**", "/work/src/*.log"], inputs)
    assert accept("/work/src/out")
    assert accept("/work/src/out/a/b.o")
    assert accept("/work/src/x.log")
    assert not accept("/work/src/sub/x.log")
    assert not accept("/work/src/outer")
    with pytest.raises(PathProblem, match="matches nothing under"):
        OutputFilter(["/usr/lib/**"], inputs)


def test_outputs_file_lines_and_delimited_values() -> None:
    """KEY=VALUE lines and KEY<<DELIM blocks become properties; bad lines name their number."""
    assert parse_outputs(b"a=1\n\nb=x=y\nnotes<<EOF\none\ntwo\nEOF\na=2\n") == {
        "a": "2", "b": "x=y", "notes": "one\ntwo"
    }
    with pytest.raises(OutputsError, match="line 2"):
        parse_outputs(b"a=1\nno equals sign\n")
    with pytest.raises(OutputsError, match="not a property name"):
        parse_outputs(b"1a=1\n")
    with pytest.raises(OutputsError, match="no line 'END'"):
        parse_outputs(b"k<<END\nnever ended\n")


def pack(changes: list[tuple[str, int]], stream: bytes, record: InputRecord | None = None) -> dict:
    """The manifest of collecting ``changes`` under /work/src with ``record``, each root read from
    the tar stream ``stream``; the archive's bytes are under ``archive``."""
    inputs = InputMap.parse({"src": "/work/src"}, "/work")
    record = record or InputRecord()
    plan = plan_collection(changes, record, inputs, OutputFilter(None, inputs))
    out = io.BytesIO()
    packer = Packer(out, plan, record, inputs)
    for root in plan.roots:
        packer.add_stream(root, [stream])
    manifest = packer.close().manifest()
    manifest["archive"] = out.getvalue()
    return manifest


NOW = 1_700_000_000
CHANGES = [("/work/src", 1), ("/work/src/same", 1), ("/work/src/edit", 1), ("/work/src/new", 1)]


def copied_in(now: float) -> InputRecord:
    """Three inputs modified at NOW, copied into /work/src at ``now``."""
    record = InputRecord()
    stream = make_tar(("", None), ("same", b"1"), ("gone", b"2"), ("edit", b"3"),
                      mtimes=dict.fromkeys(("same", "gone", "edit"), NOW))
    list(record.tap([stream], "/work/src", now))
    return record


def test_unchanged_inputs_stay_and_deleted_inputs_are_deleted() -> None:
    """Inputs modified just before the copy are hashed: an edit keeping the size and the
    second is told apart by its digest; inputs gone from the list are deleted."""
    record = copied_in(now=NOW)
    stream = make_tar(("same", b"1"), ("edit", b"4"), ("new", b"5"),
                      mtimes={"same": NOW, "edit": NOW, "new": NOW})
    manifest = pack(CHANGES, stream, record)
    assert [e["path"] for e in manifest["files"]] == ["src/edit", "src/new"]
    assert manifest["deleted"] == ["src/gone"]


def test_settled_inputs_are_known_by_their_time() -> None:
    """Inputs modified long before the copy are not hashed; an edit shows in its later time,
    and an input whose size, mode and time are unchanged stays behind."""
    record = copied_in(now=NOW + 60)
    assert record.entries["/work/src/same"].sha256 == ""
    assert record.entries["/work/src/same"].mtime == NOW
    stream = make_tar(("same", b"1"), ("edit", b"4"), ("new", b"5"),
                      mtimes={"same": NOW, "edit": NOW + 61, "new": NOW + 61})
    manifest = pack(CHANGES, stream, record)
    assert [e["path"] for e in manifest["files"]] == ["src/edit", "src/new"]
    assert manifest["deleted"] == ["src/gone"]


def test_a_settled_input_set_back_to_its_old_time_is_taken_at_its_word() -> None:
    """The quick check's one blind spot, as documented: same size, mode and time."""
    record = copied_in(now=NOW + 60)
    stream = make_tar(("same", b"1"), ("edit", b"4"), mtimes={"same": NOW, "edit": NOW})
    manifest = pack(CHANGES[:3], stream, record)
    assert manifest["files"] == []


def pack_from_tars(streams: dict[str, bytes], record: InputRecord,
                   outputs: list[str] | None = None) -> dict:
    """The manifest of collecting /work/src without a change list, each root's tar taken from
    ``streams`` (empty where the container has no such path)."""
    inputs = InputMap.parse({"src": "/work/src"}, "/work")
    plan = plan_from_tars(record, inputs, OutputFilter(outputs, inputs), scopes_are_new=True)
    assert plan is not None
    assert plan.roots == sorted(streams)
    packer = Packer(io.BytesIO(), plan, record, inputs)
    for root in plan.roots:
        packer.add_stream(root, [streams[root]] if streams[root] else [])
    return packer.close().manifest()


def test_without_a_change_list_the_tars_tell_new_changed_and_deleted() -> None:
    """From the tar of a mapped path the image did not have: what is not an input is new,
    inputs are compared as with the list, and inputs the tar lacks are deleted."""
    record = copied_in(now=NOW + 60)
    stream = make_tar(("src", None), ("src/same", b"1"), ("src/edit", b"4"), ("src/d", None),
                      ("src/d/new", b"5"),
                      mtimes={"src/same": NOW, "src/edit": NOW + 61, "src/d/new": NOW + 61})
    manifest = pack_from_tars({"/work/src": stream}, record)
    assert [e["path"] for e in manifest["files"]] == ["src/edit", "src/d", "src/d/new"]
    assert manifest["deleted"] == ["src/gone"]


def test_a_mapped_directory_the_task_removed_deletes_its_inputs() -> None:
    """No tar at all (the engine has no such path): every input under it is deleted."""
    manifest = pack_from_tars({"/work/src": b""}, copied_in(now=NOW + 60))
    assert manifest == {"version": 1, "files": [], "deleted": ["src/edit", "src/gone", "src/same"]}


def test_outputs_patterns_narrow_what_is_read_back() -> None:
    """With patterns only their fixed part is read; inputs elsewhere are neither compared nor
    deleted."""
    manifest = pack_from_tars({"/work/src/out": make_tar(("out", None), ("out/a", b"a"))},
                              copied_in(now=NOW + 60), outputs=["/work/src/out/**"])
    assert [e["path"] for e in manifest["files"]] == ["src/out", "src/out/a"]
    assert manifest["deleted"] == []


def test_places_of_outputs_patterns() -> None:
    """Each pattern's part before its first wildcard, kept within the mapped paths."""
    inputs = InputMap.parse({"a": "/work/a", "b": "/work/b"}, "/work")
    roots = inputs.container_roots
    assert OutputFilter(None, inputs).places(roots) == ["/work/a", "/work/b"]
    assert OutputFilter(["/work/a/out/**", "/work/a/out/x/*.o"], inputs).places(roots) == [
        "/work/a/out"]
    assert OutputFilter(["/work/**/*.o"], inputs).places(roots) == ["/work/a", "/work/b"]
    assert OutputFilter(["/work/b/f?.txt", "/work/a/x"], inputs).places(roots) == [
        "/work/a/x", "/work/b"]


def test_the_change_list_is_needed_where_the_tars_cannot_tell() -> None:
    """A mapped path the image had needs the list; so do patterns that would read back more
    inputs than READ_BACK_LIMIT. A mapped file is never read back."""
    inputs = InputMap.parse({"src": "/work/src", "f.bin": "/work/f.bin"}, "/work")
    record = InputRecord()
    record.add("/work/f.bin", Entry("file", size=READ_BACK_LIMIT * 2))
    record.add("/work/src/big.bin", Entry("file", size=READ_BACK_LIMIT))
    everything = OutputFilter(None, inputs)
    assert plan_from_tars(record, inputs, everything, scopes_are_new=False) is None
    plan = plan_from_tars(record, inputs, everything, scopes_are_new=True)
    assert plan is not None
    assert plan.roots == ["/work/src"]
    assert plan_from_tars(record, inputs, OutputFilter(["/work/src/**/*.o"], inputs),
                          scopes_are_new=True) is not None
    record.add("/work/src/more.bin", Entry("file", size=1))
    assert plan_from_tars(record, inputs, OutputFilter(["/work/src/**/*.o"], inputs),
                          scopes_are_new=True) is None


def test_recent_inputs_are_hashed_on_the_way_in() -> None:
    """Within ``SETTLED_SECONDS`` of the copy a file's time cannot tell an edit apart."""
    record = copied_in(now=NOW + SETTLED_SECONDS - 0.5)
    assert len(record.entries["/work/src/same"].sha256) == 64


@pytest.mark.parametrize(
    ("member", "reason"),
    [(("ln", "->/etc/passwd"), "outside the build dir"),
     (("ln", "->../../x"), "outside the build dir")],
)
def test_links_out_of_the_build_dir_are_refused(member: tuple[str, str], reason: str) -> None:
    """A symbolic link that points out of the build directory refuses the whole archive."""
    with pytest.raises(UnsafeOutputs, match=reason):
        pack([("/work/src/ln", 1)], make_tar(member))


def test_members_under_a_link_the_archive_makes_are_refused() -> None:
    """A member two levels under a symbolic link the same archive brings back is refused
    (it would be written through the link on the worker); its siblings are not blamed."""
    changes = [("/work/src/d", 1), ("/work/src/d/ln", 1), ("/work/src/d/ln/sub/x", 1),
               ("/work/src/d/ok", 1)]
    stream = make_tar(("d", None), ("d/ln", "->."), ("d/ln/sub/x", b"x"), ("d/ok", b"ok"))
    with pytest.raises(UnsafeOutputs) as refused:
        pack(changes, stream)
    assert refused.value.problems == [
        "/work/src/d/ln/sub/x: would be written through symlink /work/src/d/ln"]


@pytest.mark.parametrize("piece", [1, 7, 512, 1 << 20])
def test_a_workers_tar_enters_the_container_owned_by_root(piece: int) -> None:
    """Owners become 0:0 (the task's root has no capabilities); names, data and the stream's
    length stay, however the stream is cut."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|") as tar:
        for name, data in (("src/" + "long" * 40, b"hello" * 300), ("empty", b"")):
            member = tarfile.TarInfo(name)
            member.size, member.uid, member.gid, member.uname = len(data), 999, 995, "farm"
            tar.addfile(member, io.BytesIO(data))
        directory = tarfile.TarInfo("dist")
        directory.type, directory.uid, directory.gid = tarfile.DIRTYPE, 999, 995
        tar.addfile(directory)
    raw = buffer.getvalue()
    rooted = b"".join(owned_by_root(raw[i:i + piece] for i in range(0, len(raw), piece)))
    assert len(rooted) == len(raw)
    with tarfile.open(fileobj=io.BytesIO(rooted)) as tar:
        members = tar.getmembers()
        assert [(m.name[:8], m.uid, m.gid, m.uname) for m in members] == [
            ("src/long", 0, 0, ""), ("empty", 0, 0, ""), ("dist", 0, 0, "")]
        extracted = tar.extractfile(members[0])
        assert extracted is not None
        assert extracted.read() == b"hello" * 300


@pytest.mark.parametrize("name", ["f", "dir/sub/file.txt", "x" * 99, "x" * 100, "x" * 101,
                                  "café", "p" * 60 + "/" + "q" * 50])
@pytest.mark.parametrize("kind", [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                                  tarfile.LNKTYPE])
def test_headers_are_the_blocks_tarfile_writes(name: str, kind: bytes) -> None:
    """The header written for a member is byte for byte tarfile's PAX-format header, on the
    quick ustar path and off it (long or non-ASCII names and link targets, sizes and times
    past ustar's fields), and reads back as the same member."""
    links = ["", "t", "z" * 100, "z" * 101] if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else [""]
    for linkname in links:
        for size, mtime in ((0, 0.0), (20971, 1_700_000_000.9), (8**11, 8**11 - 1),
                            (8**11 - 1, 8**11)):
            member = tar_stream.Member(name, kind, size, 0o100755, mtime, linkname)
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, size if member.is_file else 0
            info.mode, info.mtime, info.linkname = 0o755, int(mtime), linkname
            block = tar_stream.header(member)
            assert block == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            (event, *_) = tar_stream.TarReader().feed(block + bytes(-len(block) % 512 + 1024))
            assert isinstance(event, tar_stream.Header)
            assert (event.member.name, event.member.linkname) == (name, linkname)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_quick_headers_read_as_tarfile_reads_them(fmt: Literal[0, 1, 2]) -> None:
    """Every last header block of these members reads the same through ``quick_header`` as
    through ``TarInfo.frombuf`` (prefixed and slashed names included), or is left to it."""
    quick = 0
    for name in ("a", "d/s/f", "x" * 100, "p" * 60 + "/" + "q" * 50, "é", "trail/",
                 "p" * 120 + "/" + "r" * 20 + "/"):
        for kind in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE,
                     tarfile.LNKTYPE, tarfile.FIFOTYPE):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.mtime = kind, "../t", 0o104755, 17
            info.size = 8**11 - 1 if kind == tarfile.REGTYPE else 0
            try:
                block = info.tobuf(fmt, "utf-8", "surrogateescape")[-512:]
            except ValueError:  # a name this format cannot hold
                continue
            read = tar_stream.quick_header(block)
            if read is None:
                continue
            quick += 1
            expected = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            for field in ("name", "type", "mode", "size", "mtime", "linkname"):
                assert getattr(read, field) == getattr(expected, field), (name, kind, field)
    corrupt = bytearray(tar_stream.header(tar_stream.Member("f", tarfile.REGTYPE, 1)))
    corrupt[0:1] = b"g"
    assert tar_stream.quick_header(bytes(corrupt)) is None
    assert quick >= (12 if fmt != tarfile.GNU_FORMAT else 0)
