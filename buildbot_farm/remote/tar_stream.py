"""Tar streams read and written piece by piece, never held whole (pure: no Docker, no Twisted).

:class:`TarReader` is a push parser: feed it chunks as they arrive and it returns events
(a member's header, pieces of its data, its end). It understands what Docker's and Python's
tar writers produce: ustar headers with prefixes, PAX extended headers and GNU long names.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from typing import Union

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
_DATA_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_EXTENSION_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)
MAX_EXTENSION = 1 << 20


class TarError(ValueError):
    """The bytes are not a tar stream this module can read; the message says where."""


@dataclass
class Member:
    """One archive member's header: what it is, not its data."""

    name: str
    type: bytes
    size: int = 0
    mode: int = 0o644
    mtime: float = 0.0
    linkname: str = ""

    @property
    def is_file(self) -> bool:
        """Whether the member carries file data."""
        return self.type in _DATA_TYPES

    @property
    def kind(self) -> str:
        """``file``, ``dir``, ``symlink``, ``hardlink`` or ``other``."""
        if self.is_file:
            return "file"
        return {
            tarfile.DIRTYPE: "dir",
            tarfile.SYMTYPE: "symlink",
            tarfile.LNKTYPE: "hardlink",
        }.get(self.type, "other")


@dataclass
class Header:
    """Event: a member starts."""

    member: Member


@dataclass
class Data:
    """Event: the next piece of the current member's data."""

    chunk: bytes


@dataclass
class End:
    """Event: the current member's data is complete."""

    member: Member


Event = Union[Header, Data, End]


class TarReader:
    """Parse a tar stream fed in chunks of any size; ``feed`` returns the events it completed.

    After the end-of-archive blocks ``finished`` is true and later bytes are ignored.
    """

    def __init__(self) -> None:
        self.finished = False
        self._pending = bytearray()
        self._member: Member | None = None
        self._remaining = 0  # data bytes of the current member still to come
        self._skip = 0  # padding bytes still to skip
        self._extension: tarfile.TarInfo | None = None  # an extension header awaiting its body
        self._pax: dict[str, str] = {}
        self._global_pax: dict[str, str] = {}
        self._long_name: str | None = None
        self._long_link: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """Consume ``chunk``; return the events it completes, in order."""
        events: list[Event] = []
        position, size = 0, len(chunk)
        while position < size and not self.finished:
            if self._skip:
                step = min(self._skip, size - position)
                self._skip -= step
                position += step
            elif self._member is not None:
                step = min(self._remaining, size - position)
                if step == size:
                    events.append(Data(chunk))
                else:
                    events.append(Data(chunk[position : position + step]))
                self._remaining -= step
                position += step
                if not self._remaining:
                    self._end_member(events)
            else:
                wanted = self._wanted()
                step = min(wanted - len(self._pending), size - position)
                self._pending += chunk[position : position + step]
                position += step
                if len(self._pending) == wanted:
                    block, self._pending = bytes(self._pending), bytearray()
                    self._parse(block, events)
        return events

    def close(self) -> None:
        """Raise TarError unless the stream ended cleanly (at a member boundary)."""
        if self._member is not None or self._pending or self._extension is not None:
            raise TarError("the tar stream ended in the middle of a member")

    def _wanted(self) -> int:
        if self._extension is None:
            return BLOCK
        return _padded(self._extension.size)

    def _end_member(self, events: list[Event]) -> None:
        assert self._member is not None
        events.append(End(self._member))
        self._skip = _padded(self._member.size) - self._member.size if self._member.is_file else 0
        self._member = None

    def _parse(self, block: bytes, events: list[Event]) -> None:
        if self._extension is not None:
            self._apply_extension(self._extension, block[: self._extension.size])
            self._extension = None
            return
        if block == ZERO_BLOCK:
            self.finished = True
            return
        info = quick_header(block)
        if info is None:
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except Exception as error:
                raise TarError(f"bad tar header: {error}") from error
        if info.type in _EXTENSION_TYPES:
            if info.size > MAX_EXTENSION:
                raise TarError(f"an extended tar header of {info.size} bytes is too large")
            if info.size:
                self._extension = info
            return
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise TarError(f"{info.name!r} is a sparse file, which is not supported")
        member = self._member_from(info)
        events.append(Header(member))
        if member.is_file and member.size:
            self._member, self._remaining = member, member.size
        else:
            events.append(End(member))

    def _member_from(self, info: tarfile.TarInfo) -> Member:
        pax = {**self._global_pax, **self._pax}
        name = self._long_name or pax.get("path") or info.name
        linkname = self._long_link or pax.get("linkpath") or info.linkname
        size = int(pax["size"]) if "size" in pax else info.size
        mtime = float(pax["mtime"]) if "mtime" in pax else float(info.mtime)
        self._pax, self._long_name, self._long_link = {}, None, None
        return Member(name.rstrip("/"), info.type, size, info.mode, mtime, linkname)

    def _apply_extension(self, info: tarfile.TarInfo, body: bytes) -> None:
        if info.type == tarfile.GNUTYPE_LONGNAME:
            self._long_name = body.rstrip(b"\x00").decode("utf-8", "surrogateescape")
        elif info.type == tarfile.GNUTYPE_LONGLINK:
            self._long_link = body.rstrip(b"\x00").decode("utf-8", "surrogateescape")
        else:
            records = _pax_records(body)
            if info.type == tarfile.XGLTYPE:
                self._global_pax.update(records)
            else:
                self._pax.update(records)


def _pax_records(body: bytes) -> dict[str, str]:
    """Decode PAX records (``"%d %s=%s\\n"``) into a dict."""
    records: dict[str, str] = {}
    position = 0
    while position < len(body) and body[position] != 0:
        space = body.find(b" ", position)
        if space < 0:
            raise TarError("bad PAX header record")
        try:
            length = int(body[position:space])
        except ValueError as error:
            raise TarError("bad PAX header record length") from error
        if length <= space - position:
            raise TarError("bad PAX header record length")
        record = body[space + 1 : position + length - 1]
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode(
            "utf-8", "surrogateescape"
        )
        position += length
    return records


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


_QUICK_TYPES = (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE)
_NUMBERS = ((100, 108), (124, 136), (136, 148), (148, 156))  # mode, size, mtime, checksum


def quick_header(block: bytes) -> tarfile.TarInfo | None:
    """The member a plain POSIX ustar block describes (a file, directory or link with octal
    numbers and a good checksum: what engines write for most members), read as
    ``TarInfo.frombuf`` reads it but several times faster; None for any other block, which
    ``frombuf`` then reads (or refuses)."""
    if block[257:265] != b"ustar\x0000" or block[156:157] not in _QUICK_TYPES:
        return None
    try:
        mode, size, mtime, checksum = (
            int(block[start:end].split(b"\0", 1)[0].strip() or b"0", 8) for start, end in _NUMBERS)
    except ValueError:
        return None
    if checksum != sum(block) - sum(block[148:156]) + 8 * 32:
        return None
    info = tarfile.TarInfo(_text(block[0:100]))
    info.type, info.mode, info.size, info.mtime = block[156:157], mode, size, mtime
    info.linkname = _text(block[157:257])
    if info.type == tarfile.DIRTYPE:  # before the prefix, as frombuf does
        info.name = info.name.rstrip("/")
    prefix = _text(block[345:500])
    if prefix:
        info.name = f"{prefix}/{info.name}"
    return info


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


_OCTAL_LIMIT = 8**11  # sizes and times that fit a ustar field's 11 octal digits


def header(member: Member) -> bytes:
    """The header block(s) for ``member`` (PAX format, so any name length works).

    A member that needs no PAX record (ASCII names of at most 100 bytes, a size and time
    that fit ustar's fields) gets the same one ustar block ``tarfile`` would write, built
    here directly: ``tarfile`` takes ten times as long, which shows with thousands of
    outputs.
    """
    name = member.name + "/" if member.type == tarfile.DIRTYPE else member.name
    size = member.size if member.is_file else 0
    mtime = int(member.mtime)
    if (name.isascii() and member.linkname.isascii() and len(name) <= 100
            and len(member.linkname) <= 100 and 0 <= size < _OCTAL_LIMIT
            and 0 <= mtime < _OCTAL_LIMIT and "\0" not in name + member.linkname):
        return _ustar_block(name.encode(), member.type, size, member.mode & 0o7777, mtime,
                            member.linkname.encode())
    info = tarfile.TarInfo(member.name)
    info.type = member.type
    info.size = member.size if member.is_file else 0
    info.mode = member.mode & 0o7777
    info.mtime = int(member.mtime)
    info.linkname = member.linkname
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _ustar_block(name: bytes, kind: bytes, size: int, mode: int, mtime: int,
                 linkname: bytes) -> bytes:
    """One ustar header block, laid out and checksummed as POSIX (and ``tarfile``) do."""
    block = bytearray(BLOCK)
    block[0 : len(name)] = name
    block[100:148] = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, 0, 0, size, mtime)
    block[148:156] = b"        "  # the checksum counts its own field as spaces
    block[156:157] = kind
    block[157 : 157 + len(linkname)] = linkname
    block[257:265] = b"ustar\x0000"
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


def padding(size: int) -> bytes:
    """The zero bytes that follow ``size`` bytes of member data."""
    return bytes(_padded(size) - size)


def end_of_archive() -> bytes:
    """The two zero blocks that end an archive."""
    return ZERO_BLOCK * 2
