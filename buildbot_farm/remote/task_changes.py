"""What a container task changed, and the tar that carries it back (standard library only).

Both ways of running a task use it: the master packs what its engine sends into a zstd
archive for the worker, and ``farm-remote.pyz container-task`` packs what the worker's own
engine sends into a plain tar beside the build directory; the same members are refused.

The engine's change list is relative to the image, so files copied in show as added too.
:class:`InputRecord` remembers what was copied in so that unchanged inputs stay behind and
inputs the task deleted are deleted on the worker as well.

That list is needed only where a mapped path was already in the image: there it tells the
image's files from the task's. Where every mapped path is new (what the task's container
was created with has nothing there), what is under them now is inputs and the task's work,
and the tars of those paths say all of it: :func:`plan_from_tars` makes a plan without the
list, and :class:`Packer` finds the deleted inputs as those no tar held. The list is not
free: the engine walks the container's files for it (300 ms for a 200 MB image, whatever
the task did, on the Docker 20.10 the tests run), while the tars are read back anyway,
since every input copied in shows in the list as added and so is read back with the rest.

Whether an input changed is decided the way rsync's quick check does, where that is sound: a
file whose modification time was at least ``SETTLED_SECONDS`` before the copy began is
unchanged if its size, mode and modification time (whole seconds, as the engine's archives
carry them) are the same, since anything the task writes to it gets a later time. Only a
file modified just before the task (within the same seconds as the task could write it) is
hashed on the way in and compared by digest on the way out. A task that rewrites an input
and then sets its time back (``touch -d``) is taken at its word.
"""

from __future__ import annotations

import hashlib
import posixpath
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from buildbot_farm.remote import tar_stream
from buildbot_farm.remote.paths import UnsafePath, link_stays_inside, safe_member_path
from buildbot_farm.remote.task_paths import CONTROL_DIR, InputMap, OutputFilter, is_under

ADDED_OR_CHANGED = (0, 1)
DELETED = 2
MAX_ROOTS = 64
SPOOL = 8 << 20
SETTLED_SECONDS = 2.0
READ_BACK_LIMIT = 8 << 20  # inputs under the outputs patterns worth reading back, not listing


class UnsafeOutputs(Exception):
    """Members of the task's changes were refused; nothing was brought back."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(
            "refused to bring back the task's changes, nothing was written on the worker:\n  "
            + "\n  ".join(problems)
        )
        self.problems = problems


@dataclass(frozen=True)
class Entry:
    """One copied-in path: its kind, and for files their size, mode, mtime and sha256.

    ``sha256`` is empty for a settled file (see the module's docstring): its time decides.
    """

    kind: str
    size: int = 0
    mode: int = 0
    linkname: str = ""
    sha256: str = ""
    mtime: int = 0


class InputRecord:
    """Container path -> Entry for everything copied into the container."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def add(self, path: str, entry: Entry) -> None:
        """Record ``path`` as copied in."""
        self.entries[path] = entry

    def tap(self, chunks: Iterable[bytes], dest: str, now: float) -> Iterator[bytes]:
        """Pass a tar stream bound for ``dest`` through unchanged, recording its members.

        ``now`` is when the copy began; files modified since ``now - SETTLED_SECONDS`` are
        hashed, older ones are known by their time.
        """
        reader = tar_stream.TarReader()
        digest: Any = None
        settled_before = now - SETTLED_SECONDS
        for chunk in chunks:
            for event in reader.feed(chunk):
                if isinstance(event, tar_stream.Header):
                    recent = event.member.is_file and event.member.mtime > settled_before
                    digest = hashlib.sha256() if recent else None
                elif isinstance(event, tar_stream.Data):
                    if digest is not None:
                        digest.update(event.chunk)
                else:
                    member = event.member
                    path = posixpath.normpath(posixpath.join(dest, member.name))
                    self.entries[path] = Entry(
                        member.kind,
                        member.size,
                        member.mode & 0o7777,
                        member.linkname,
                        digest.hexdigest() if digest is not None else "",
                        int(member.mtime),
                    )
            yield chunk
        reader.close()


@dataclass
class Plan:
    """What to read back from the container (``roots``), which paths to keep, what to delete.

    A plan from the change list (:func:`plan_collection`) knows ``wanted`` and ``deleted``
    (worker paths). A plan from the tars (:func:`plan_from_tars`) has ``wanted`` None: every
    member under the roots that the filter accepts is a candidate, a root the container does
    not have is empty, and the deleted inputs are found while reading (:meth:`deletions`).
    """

    roots: list[str]
    wanted: set[str] | None
    deleted: list[str]
    inputs: InputMap
    accept: OutputFilter

    def __post_init__(self) -> None:
        self._scopes = set(self.inputs.container_roots)

    @property
    def from_tars(self) -> bool:
        """Whether the plan was made without a change list: a missing root is then empty."""
        return self.wanted is None

    def wants(self, path: str) -> bool:
        """Whether container ``path`` is to come back if the task added or changed it."""
        if self.wanted is not None:
            return path in self.wanted
        return path not in self._scopes and self.accept(path)

    def deletions(self, record: InputRecord, seen: set[str]) -> list[str]:
        """The worker paths to delete: the plan's own, or (a plan from the tars) the inputs
        under the roots that no tar held."""
        if not self.from_tars:
            return self.deleted
        gone = [p for p in record.entries
                if p not in seen and p not in self._scopes
                and any(is_under(p, root) for root in self.roots)]
        return _deleted_on_worker(gone, self.inputs, self.accept)


def plan_collection(
    changes: Iterable[tuple[str, int]], record: InputRecord, inputs: InputMap, accept: OutputFilter
) -> Plan:
    """Decide from the change list which container paths come back and which are deleted."""
    scopes = inputs.container_roots
    present = set()
    wanted = set()
    gone = []
    for path, kind in changes:
        if kind == DELETED:
            gone.append(path)
            continue
        present.add(path)
        if (kind in ADDED_OR_CHANGED and _in_scope(path, scopes) and path not in scopes
                and accept(path)):
            wanted.add(path)
    gone += [p for p in record.entries if p not in present and p not in scopes]
    roots = sorted(p for p in wanted if posixpath.dirname(p) not in wanted)
    if len(roots) > MAX_ROOTS:
        roots = [s for s in scopes if any(is_under(p, s) for p in wanted)]
    return Plan(roots, wanted, _deleted_on_worker(gone, inputs, accept), inputs, accept)


def plan_from_tars(record: InputRecord, inputs: InputMap, accept: OutputFilter,
                   scopes_are_new: bool) -> Plan | None:
    """A plan that reads the mapped paths back whole instead of asking for the change list,
    or None where the list is needed: a mapped path was in the image (``scopes_are_new``
    false), or outputs patterns would have more than READ_BACK_LIMIT of inputs read back.

    A mapped file is not read back: a mapped path never comes back itself, only what is
    under it.
    """
    if not scopes_are_new:
        return None
    mapped_files = {path for path in inputs.container_roots
                    if path in record.entries and record.entries[path].kind == "file"}
    roots = [r for r in accept.places(inputs.container_roots) if r not in mapped_files]
    if accept.patterns:
        inputs_there = sum(entry.size for path, entry in record.entries.items()
                           if any(is_under(path, root) for root in roots))
        if inputs_there > READ_BACK_LIMIT:
            return None
    return Plan(roots, None, [], inputs, accept)


def _in_scope(path: str, scopes: list[str]) -> bool:
    return any(is_under(path, s) for s in scopes) and not is_under(path, CONTROL_DIR)


def _deleted_on_worker(gone: Iterable[str], inputs: InputMap, accept: OutputFilter) -> list[str]:
    """The worker paths of the container paths ``gone`` that are the task's to delete, none
    under another."""
    scopes = inputs.container_roots
    deleted: list[str] = []
    for path in sorted(set(gone)):
        if not _in_scope(path, scopes) or not accept(path):
            continue
        if deleted and is_under(path, deleted[-1]):
            continue
        deleted.append(path)
    return [inputs.to_worker(p) or "" for p in deleted]


@dataclass
class Packed:
    """The archive written, and its manifest (path, type, size, sha256 / link target)."""

    files: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    data_bytes: int = 0
    problems: list[str] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        """The manifest as JSON-ready data (what ``farm-remote.pyz unpack`` checks and applies)."""
        return {"version": 1, "files": self.files, "deleted": self.deleted}


class Packer:
    """Writes the chosen members of container tar streams as one tar into ``out``.

    ``out`` is any binary writer (a zstd stream on the master, a plain file on the worker);
    the caller closes it after :meth:`close`.
    """

    def __init__(self, out: IO[bytes], plan: Plan, record: InputRecord, inputs: InputMap) -> None:
        self._writer = out
        self._plan = plan
        self._record = record
        self._inputs = inputs
        self._emitted: dict[str, str] = {}  # container path -> kind
        self._seen: set[str] = set()  # every container path the tars held
        self._base = "/"
        self.packed = Packed(deleted=list(plan.deleted))

    def add_stream(self, root: str, chunks: Iterable[bytes]) -> None:
        """Take what the plan wants from the tar stream of container path ``root``."""
        base = self._base = posixpath.dirname(root)
        reader = tar_stream.TarReader()
        selected: _Selected | None = None
        for chunk in chunks:
            for event in reader.feed(chunk):
                if isinstance(event, tar_stream.Header):
                    path = posixpath.normpath(posixpath.join(base, event.member.name))
                    self._seen.add(path)
                    selected = self._select(path, event.member)
                elif selected is None:
                    continue
                elif isinstance(event, tar_stream.Data):
                    selected.data(event.chunk)
                else:
                    self._finish(selected)
                    selected = None
        reader.close()

    def close(self) -> Packed:
        """End the archive; raise UnsafeOutputs if any member was refused."""
        self._writer.write(tar_stream.end_of_archive())
        self.packed.deleted = self._plan.deletions(self._record, self._seen)
        if self.packed.problems:
            raise UnsafeOutputs(self.packed.problems)
        return self.packed

    def _select(self, path: str, member: tar_stream.Member) -> _Selected | None:
        if path in self._emitted or not self._plan.wants(path):
            return None
        worker = self._inputs.to_worker(path)
        try:
            worker = safe_member_path(worker or "")
        except UnsafePath as error:
            self.packed.problems.append(f"{path}: {error}")
            return None
        parent = _symlink_above(path, self._emitted)
        if parent is not None:
            self.packed.problems.append(f"{path}: would be written through symlink {parent}")
            return None
        known = self._record.entries.get(path)
        kind = member.kind
        if kind == "other":
            self.packed.problems.append(f"{path}: a device, pipe or socket cannot come back")
            return None
        if kind == "dir" and known is not None and known.kind == "dir":
            return None
        if kind == "symlink" and not link_stays_inside(worker, member.linkname):
            self.packed.problems.append(
                f"{path}: a symbolic link to {member.linkname!r}, which is outside the build dir"
            )
            return None
        if kind == "hardlink":
            target = posixpath.normpath(posixpath.join(self._base, member.linkname))
            if self._emitted.get(target) != "file":
                self.packed.problems.append(
                    f"{path}: a hard link to {member.linkname!r}, which does not come back"
                )
                return None
            member.linkname = self._inputs.to_worker(target) or ""
        unchanged_candidate = (
            known is not None
            and kind == "file"
            and known.kind == "file"
            and known.size == member.size
            and known.mode == member.mode & 0o7777
        )
        if unchanged_candidate and known is not None and not known.sha256:
            if int(member.mtime) == known.mtime:
                return None  # a settled input the task did not touch: it stays behind
            unchanged_candidate = False
        old_digest = known.sha256 if known is not None and unchanged_candidate else None
        selected = _Selected(path, worker, member, old_digest)
        if not unchanged_candidate:
            self._write_header(selected)
        return selected

    def _write_header(self, selected: _Selected) -> None:
        member = selected.member
        renamed = tar_stream.Member(
            selected.worker, member.type, member.size, member.mode, member.mtime, member.linkname
        )
        self._writer.write(tar_stream.header(renamed))
        selected.streaming = self._writer

    def _finish(self, selected: _Selected) -> None:
        member = selected.member
        if selected.spool is not None:
            selected.spool.seek(0)
            if selected.digest.hexdigest() == selected.old_digest:
                selected.spool.close()
                return
            self._write_header(selected)
            while block := selected.spool.read(1 << 20):
                self._writer.write(block)
            selected.spool.close()
        if member.is_file:
            self._writer.write(tar_stream.padding(member.size))
        self._emitted[selected.path] = member.kind
        entry: dict[str, Any] = {"path": selected.worker, "type": member.kind}
        if member.is_file:
            entry.update(size=member.size, sha256=selected.digest.hexdigest())
            self.packed.data_bytes += member.size
        elif member.kind in ("symlink", "hardlink"):
            entry["target"] = member.linkname
        self.packed.files.append(entry)


class _Selected:
    """A member being taken: its data is streamed out, or spooled until its digest is known."""

    def __init__(self, path: str, worker: str, member: tar_stream.Member, old_digest: str | None):
        self.path = path
        self.worker = worker
        self.member = member
        self.old_digest = old_digest
        self.digest = hashlib.sha256()
        self.streaming: Any = None
        self.spool: Any = None
        if old_digest is not None:
            self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL)  # noqa: SIM115

    def data(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        if self.spool is not None:
            self.spool.write(chunk)
        else:
            self.streaming.write(chunk)


def _symlink_above(path: str, emitted: dict[str, str]) -> str | None:
    """The nearest directory above ``path`` that the archive makes a symbolic link, if any
    (one look-up per level: the outputs can be many thousands)."""
    parent = posixpath.dirname(path)
    while True:
        if emitted.get(parent) == "symlink":
            return parent
        above = posixpath.dirname(parent)
        if above == parent:
            return None
        parent = above


def consume_into(packer: Packer, root: str) -> Callable[[Iterable[bytes]], None]:
    """A ``consume`` function for Engine get_archive calls that feeds ``packer``."""
    return lambda chunks: packer.add_stream(root, chunks)
