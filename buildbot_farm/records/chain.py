"""The hash chain of build records and tombstones, and its verification.

Pure: no buildbot, no twisted. Every record and every tombstone is one entry of the chain,
numbered (``seq``) in the order the farm stored them. An entry's hash is the sha256 of the
hash of the entry before it, the entry's kind, name and version (see :func:`entry_hash`)
and its content (the record's canonical JSON document, or the tombstone's JSON). The
first entry's previous hash is :data:`GENESIS`. Changing, removing or reordering any entry
changes every hash after it, so :func:`verify_entries` finds the first entry that differs.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from buildbot_farm.records.model import canonical_json

GENESIS = "0" * 64
RECORD = "record"
TOMBSTONE = "tombstone"


def entry_hash(prev_hash: str, kind: str, name: str, version: str, content: bytes) -> str:
    """The chain hash of one entry, given the hash of the entry before it.

    sha256 of the UTF-8 of ``prev_hash``, ``kind``, sha256(name) and sha256(version) in hex,
    each followed by a newline, then the content: simple enough that the database computes
    it too (a trigger on SQLite, a function on PostgreSQL), so an insert stays one statement.
    """
    digest = hashlib.sha256(
        "\n".join((prev_hash, kind, _name_sha256(name), _sha256(version), "")).encode()
    )
    digest.update(content)
    return digest.hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=256)
def _name_sha256(name: str) -> str:
    """sha256 of a record's name: a farm records the same few names over and over."""
    return _sha256(name)


def tombstone_content(deleted_by: str, deleted_at: float, reason: str) -> bytes:
    """The content of a tombstone's entry: who deleted the record, when and why."""
    return canonical_json({"deletedAt": deleted_at, "deletedBy": deleted_by, "reason": reason})


@dataclass(frozen=True)
class Broken:
    """Where the chain stops being the one the farm stored, and how."""

    seq: int
    name: str
    version: str
    problem: str

    def __str__(self) -> str:
        return f"entry {self.seq} ({self.name} {self.version}): {self.problem}"


def verify_entries(entries: Iterable[dict[str, Any]]) -> tuple[int, str, Broken | None]:
    """Walk served chain entries in order; return (entries verified, last hash, first break).

    Each entry is the JSON the records-chain API answers: ``seq``, ``kind``, ``name``,
    ``version``, ``prevHash``, ``hash`` and ``record`` (the document) or ``deleted`` (the
    tombstone), null when the row is gone from the database.
    """
    expected_seq, prev, count = 1, GENESIS, 0
    for entry in entries:
        problem = _problem(entry, expected_seq, prev)
        if problem is not None:
            seq = entry.get("seq")
            at = seq if isinstance(seq, int) and not isinstance(seq, bool) else -1
            return count, prev, Broken(
                at, str(entry.get("name")), str(entry.get("version")), problem
            )
        prev, expected_seq, count = str(entry["hash"]), expected_seq + 1, count + 1
    return count, prev, None


def _problem(entry: dict[str, Any], expected_seq: int, prev: str) -> str | None:
    """What is wrong with ``entry`` as the next one of the chain, or None."""
    seq, kind = entry.get("seq"), str(entry.get("kind"))
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < expected_seq:
        return f"out of order: seq {seq!r} after {expected_seq - 1}"
    if seq > expected_seq:
        return f"entries {expected_seq}..{seq - 1} before it were removed from the chain"
    if entry.get("prevHash") != prev:
        return ("its previous hash is not the hash of the entry before it: an entry before "
                "it was removed or altered, or it was inserted out of order")
    content = _content(entry)
    if content is None:
        return f"the {kind} was removed from the database (its chain entry stays)"
    name, version = str(entry.get("name")), str(entry.get("version"))
    if entry_hash(prev, kind, name, version, content) != entry.get("hash"):
        return f"the {kind} was altered: its content does not give its hash"
    return None


def _content(entry: dict[str, Any]) -> bytes | None:
    """The bytes an entry's hash covers, from what the API served (None if missing)."""
    if entry.get("kind") == RECORD:
        record = entry.get("record")
        return None if record is None else canonical_json(record)
    deleted = entry.get("deleted")
    if entry.get("kind") != TOMBSTONE or not isinstance(deleted, dict):
        return None
    try:
        return tombstone_content(
            deleted["deletedBy"], float(deleted["deletedAt"]), deleted["reason"]
        )
    except (KeyError, TypeError, ValueError):
        return None


def served_entry(row: dict[str, Any]) -> bytes:
    """One chain entry as the API serves it, from a row of :meth:`RecordStore.chain`."""
    entry: dict[str, Any] = {
        "seq": int(row["seq"]), "kind": row["kind"], "name": row["name"],
        "version": row["version"], "prevHash": row["prev_hash"], "hash": row["hash"],
    }
    if row["kind"] == RECORD:
        entry["record"] = None if row["body"] is None else json.loads(row["body"])
    else:
        entry["deleted"] = None
        if row["deleted_at"] is not None:
            entry["deleted"] = json.loads(tombstone_content(
                row["deleted_by"], float(row["deleted_at"]), row["reason"]
            ))
    return canonical_json(entry)
