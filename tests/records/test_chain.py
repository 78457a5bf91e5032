"""Records immutable in fact (no SQL changes them), signed once, and chained (issue 14)."""

from __future__ import annotations

import base64
import copy
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import SSlibKey
from twisted.internet import defer, threads
from twisted.web import server

from buildbot_farm import db
from buildbot_farm.cli import main
from buildbot_farm.records.chain import GENESIS, entry_hash, served_entry, verify_entries
from buildbot_farm.records.config import BuildRecords
from buildbot_farm.records.host import RecordsHost
from buildbot_farm.records.model import BuildRecord, parse_record
from buildbot_farm.records.provenance import PAYLOAD_TYPE, key_id, load_public_key
from buildbot_farm.records.store import RecordStore, Tombstone
from buildbot_farm.testing import FakeFarmContext
from buildbot_farm.web import FarmRoot
from tests.db.conftest import DbUrlFactory
from tests.harness.twisted_reactor import reactor
from tests.records.farm import records_host
from tests.records.test_api import request

KEY, ADMIN = "chain-key-0123456789", "chain-admin-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}
DIGEST = "ab" * 32


def posted(version: str) -> dict[str, Any]:
    """A record of 'app' with one binary, as a client posts it."""
    return {
        "name": "app", "version": version, "timestamp": 1000.5, "result": "success",
        "binaries": [{"url": f"https://dl/app-{version}", "size": 3, "sha256": DIGEST}],
    }


@dataclass
class Api:
    """The records API on a loopback port, with its endpoint and basedir."""

    url: str
    endpoint: RecordsHost
    basedir: Path
    farm: FakeFarmContext

    @property
    def chain(self) -> str:
        """The records-chain URL."""
        return self.url.rsplit("/", 1)[0] + "/records-chain"

    def public_pem(self) -> bytes:
        """The public key of the signing key loaded now."""
        return (self.basedir / "records-signing-key.pem.pub").read_bytes()


@pytest_twisted.async_yield_fixture
async def api(database: db.Database, tmp_path: Path) -> AsyncIterator[Api]:
    """A RecordsHost with a signing key, mounted as a master does, on a loopback port."""
    endpoint, farm = records_host(database, reactor, str(tmp_path), "http://master/")
    settings = BuildRecords(api_keys={"ci": KEY}, admin_keys={"ops": ADMIN})
    await endpoint.configure(settings)
    root = FarmRoot()
    root.mount("builds", endpoint.resource)
    root.mount("records-chain", endpoint.chain)
    port = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")
    yield Api(f"http://127.0.0.1:{port.getHost().port}/builds", endpoint, tmp_path, farm)
    await port.stopListening()


def superuser(database: db.Database, *statements: str) -> None:
    """Run ``statements`` as someone who bypasses the triggers (blocking).

    SQLite: the file opened directly, with the farm's triggers dropped. PostgreSQL: the
    cluster's superuser with ``session_replication_role = replica`` (no triggers fire).
    """
    if database.dialect.name == "sqlite":
        connection = sqlite3.connect(database.url.path)
        triggers = connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        ).fetchall()
        for (name,) in triggers:
            connection.execute(f"DROP TRIGGER {name}")
        for statement in statements:
            connection.execute(statement)
        connection.commit()
        connection.close()
        return
    with psycopg2.connect(database.url.dsn) as pg, pg.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        for statement in statements:
            cursor.execute(statement)
    pg.close()


async def snapshot(database: db.Database) -> dict[str, list[db.Row]]:
    """Every row of the records tables."""
    tables = ("farm_records", "farm_record_tombstones", "farm_record_provenance",
              "farm_record_chain", "farm_record_chain_head")  # 0006's chain: legacy entries
    return {t: await database.fetchall(f"SELECT * FROM {t} ORDER BY 1") for t in tables}


async def verify(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``buildbot-farm verify --chain url`` (its entry point, in a thread); (code, output)."""
    code = await threads.deferToThread(main, ["verify", "--chain", url])
    out = capsys.readouterr()
    return code, out.out + out.err


async def fill(api: Api) -> None:
    """Post app 1, 2 and 3, and delete app 2."""
    for version in ("1", "2", "3"):
        assert (await request("POST", api.url, json=posted(version), headers=AUTH))[0] == 201
    code, _, _ = await request("DELETE", f"{api.url}/app/2?reason=broken", headers=ADMIN_AUTH)
    assert code == 200


def refused_statements(dialect: str, record_id: int) -> list[str]:
    """Every kind of statement that would change or remove a stored record or tombstone."""
    # Forged rows carry a chain entry, so that what refuses them is the upsert's refusal.
    columns = "(name, version, timestamp, result, body, recorded_at, chain_seq, hash)"
    forged = "('app', '1', 1, 'success', '{\"forged\":1}', 1, 99, 'h')"
    common = [
        "UPDATE farm_records SET body = '{}'",
        "DELETE FROM farm_records",
        "UPDATE farm_record_tombstones SET reason = 'rewritten'",
        "DELETE FROM farm_record_tombstones",
        "UPDATE farm_record_provenance SET envelope = '{}'",
        "DELETE FROM farm_record_provenance",
        "UPDATE farm_records SET hash = 'x'",
        "UPDATE farm_records SET chain_seq = chain_seq + 10",
        "UPDATE farm_record_tombstones SET hash = 'x'",
        "DELETE FROM farm_record_chain_head",
        "UPDATE farm_record_chain_head SET seq = 0",
        f"INSERT INTO farm_records {columns} VALUES {forged}"
        " ON CONFLICT (name, version) DO UPDATE SET body = excluded.body",
        "INSERT INTO farm_record_tombstones (record_id, deleted_by, deleted_at, reason,"
        f" chain_seq, hash) VALUES ({record_id}, 'x', 1, 'x', 99, 'h')"
        " ON CONFLICT (record_id) DO UPDATE SET reason = excluded.reason",
        "INSERT INTO farm_record_provenance (record_id, envelope, signed_at)"
        f" VALUES ({record_id}, '{{}}', 1)"
        " ON CONFLICT (record_id) DO UPDATE SET envelope = excluded.envelope",
    ]
    if dialect == "sqlite":
        return [
            *common,
            f"INSERT OR REPLACE INTO farm_records {columns} VALUES {forged}",
            f"REPLACE INTO farm_records (id, name, version, timestamp, result, body, recorded_at)"
            f" VALUES ({record_id}, 'other', '9', 1, 'success', '{{}}', 1)",
            "INSERT OR REPLACE INTO farm_record_tombstones"
            f" (record_id, deleted_by, deleted_at, reason) VALUES ({record_id}, 'x', 1, 'x')",
            "INSERT OR REPLACE INTO farm_record_provenance (record_id, envelope, signed_at)"
            f" VALUES ({record_id}, '{{}}', 1)",
            "INSERT OR REPLACE INTO farm_records (id, name, version, timestamp, result, body,"
            " recorded_at, chain_seq, hash) SELECT id, name, version, timestamp,"
            " result, '{}', recorded_at, chain_seq, hash FROM farm_records",
            "INSERT OR REPLACE INTO farm_record_chain_head (id, seq, hash) VALUES (1, 0, 'x')",
        ]
    return [
        *common,
        "TRUNCATE farm_records CASCADE",
        "TRUNCATE farm_record_tombstones",
        "TRUNCATE farm_record_provenance",
        "TRUNCATE farm_record_chain",
        "TRUNCATE farm_record_chain_head",
        "TRUNCATE farm_records, farm_record_tombstones, farm_record_provenance,"
        " farm_record_chain, farm_record_chain_head",
    ]


@pytest_twisted.ensureDeferred
async def test_no_sql_changes_or_removes_a_record_or_tombstone(
    api: Api, database: db.Database
) -> None:
    """UPDATE, DELETE, REPLACE, upserts and TRUNCATE of every records table are refused."""
    await fill(api)
    before = await snapshot(database)
    row = await database.fetchone("SELECT record_id FROM farm_record_tombstones")
    assert row is not None
    for statement in refused_statements(database.dialect.name, int(row["record_id"])):
        refused = r"immutable|append-only|forward|one row|stays|chained"
        with pytest.raises(db.IntegrityError, match=refused):
            await database.execute(statement)
    assert await snapshot(database) == before


@pytest_twisted.ensureDeferred
async def test_the_chain_verifies_and_names_an_altered_record(
    api: Api, database: db.Database, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify --chain passes an intact chain; a row altered anyway is named, exit 1."""
    await fill(api)
    code, out = await verify(api.chain, capsys)
    assert code == 0
    assert f"{api.chain}: verified: 4 entries, chain head " in out
    superuser(
        database,
        "UPDATE farm_records SET body = replace(body, 'app-3', 'evil-3') WHERE version = '3'",
    )
    code, out = await verify(api.chain, capsys)
    assert code == 1
    assert "NOT VERIFIED after 2 good entries: entry 3 (app 3): the record was altered" in out


@pytest_twisted.ensureDeferred
async def test_an_altered_tombstone_is_named(
    api: Api, database: db.Database, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tombstone whose reason was rewritten behind the farm's back breaks the chain there."""
    await fill(api)
    superuser(database, "UPDATE farm_record_tombstones SET reason = 'routine'")
    code, out = await verify(api.chain, capsys)
    assert code == 1
    assert "entry 4 (app 2): the tombstone was altered" in out


@pytest_twisted.ensureDeferred
async def test_a_removed_record_is_reported(
    api: Api, database: db.Database, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record row deleted (its chain entry with it) is reported at the entry after it."""
    await fill(api)
    superuser(
        database,
        "DELETE FROM farm_record_provenance WHERE record_id IN"
        " (SELECT id FROM farm_records WHERE version = '1')",
        "DELETE FROM farm_records WHERE version = '1'",
    )
    code, out = await verify(api.chain, capsys)
    assert code == 1
    assert "entry 2 (app 2): entries 1..1 before it were removed from the chain" in out


def test_a_chain_renumbered_or_reordered_is_reported() -> None:
    """Entries swapped, or one dropped and the rest renumbered, break the chain at that point."""
    entries, prev = [], GENESIS
    for seq in (1, 2, 3):
        record = {"name": "app", "version": str(seq)}
        digest = entry_hash(prev, "record", "app", str(seq),
                            json.dumps(record, sort_keys=True, separators=(",", ":")).encode())
        entries.append({"seq": seq, "kind": "record", "name": "app", "version": str(seq),
                        "prevHash": prev, "hash": digest, "record": record})
        prev = digest
    assert verify_entries(entries) == (3, prev, None)
    swapped = [entries[0], {**entries[2], "seq": 2}, {**entries[1], "seq": 3}]
    count, _, broken = verify_entries(swapped)
    assert count == 1
    assert broken is not None
    assert (broken.seq, broken.version) == (2, "3")
    renumbered = [entries[0], {**entries[2], "seq": 2}]
    assert "previous hash" in str(verify_entries(renumbered)[2])


@pytest_twisted.ensureDeferred
async def test_provenance_is_signed_once_and_verifies_with_securesystemslib(
    api: Api, database: db.Database
) -> None:
    """Every served envelope verifies (securesystemslib DSSE); a new key never re-signs it.

    A record stored without provenance (as before migration 0006) is signed on its first
    request and keeps that envelope; a tampered payload fails verification.
    """
    await fill(api)
    await RecordStore(database).insert(parse_record(posted("4")), now=9)
    kept = "SELECT record_id FROM farm_record_provenance ORDER BY 1"
    assert len(await database.fetchall(kept)) == 3  # signed at insert: 1, 2, 3
    public = load_public_key(api.public_pem())
    first_key = SSlibKey.from_crypto(public, keyid=key_id(public))
    envelopes = {}
    for version in ("1", "3", "4"):
        code, _, envelope = await request("GET", f"{api.url}/app/{version}/provenance")
        assert code == 200
        envelopes[version] = envelope
        verified = Envelope.from_dict(copy.deepcopy(envelope)).verify([first_key], 1)
        assert list(verified) == [first_key.keyid]
        assert envelope["payloadType"] == PAYLOAD_TYPE
    assert len(await database.fetchall(kept)) == 4  # and 4, on its first request
    # A new signing key: the stored envelopes are served as they were, not signed again.
    new_key = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    settings = BuildRecords(api_keys={"ci": KEY}, signing_key=new_key.decode())
    (api.basedir / "new").mkdir()
    api.farm.master.basedir = str(api.basedir / "new")
    await api.endpoint.configure(settings)
    assert api.endpoint.signer is not None
    assert api.endpoint.signer.key_id != first_key.keyid
    for version, envelope in envelopes.items():
        assert (await request("GET", f"{api.url}/app/{version}/provenance"))[2] == envelope
    tampered = dict(envelopes["1"])
    payload = json.loads(base64.b64decode(tampered["payload"]))
    payload["subject"][0]["digest"]["sha256"] = "cd" * 32
    tampered["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(VerificationError):
        Envelope.from_dict(tampered).verify([first_key], 1)


@pytest_twisted.ensureDeferred
async def test_concurrent_inserts_from_two_masters_chain_in_order(
    backend: str, db_url_for: DbUrlFactory
) -> None:
    """Two farm databases (two masters) inserting at once give one unbroken chain."""
    url = db_url_for(backend)
    first = await db.connect(url, reactor, pool_size=4, timeout=10.0)
    second = await db.connect(url, reactor, pool_size=4, timeout=10.0)
    stores = [RecordStore(first), RecordStore(second)]
    await defer.gatherResults([
        defer.ensureDeferred(stores[n % 2].insert(
            BuildRecord(name="app", version=str(n), timestamp=1.0), now=float(n)
        ))
        for n in range(40)
    ])
    rows = await stores[0].chain(0, 1000)
    entries = [json.loads(served_entry(row)) for row in rows]
    count, head, broken = verify_entries(entries)
    assert (count, broken) == (40, None)
    assert [e["seq"] for e in entries] == list(range(1, 41))
    assert entries[-1]["hash"] == head
    await first.stop()
    await second.stop()



@pytest_twisted.ensureDeferred
async def test_tombstones_and_records_from_two_masters_chain_in_order(
    backend: str, db_url_for: DbUrlFactory
) -> None:
    """A master deleting while another inserts (whose head goes stale) gives one chain.

    Each insert after a delete finished on the other master starts from a head without that
    tombstone: the database's guard refuses it and the master chains after the tombstone.
    """
    url = db_url_for(backend)
    first = await db.connect(url, reactor, pool_size=4, timeout=10.0)
    second = await db.connect(url, reactor, pool_size=4, timeout=10.0)
    inserter, deleter = RecordStore(first), RecordStore(second)
    for n in range(16):
        await deleter.insert(BuildRecord(name="old", version=str(n), timestamp=1.0), now=1.0)
    for n in range(6):  # one after the other: the inserter's head is stale every time
        await inserter.insert(BuildRecord(name="app", version=f"s{n}", timestamp=1.0), now=1.0)
        await deleter.delete("old", str(n), "ops", "why", now=float(n))
    at_once: list[defer.Deferred[bytes | Tombstone]] = [  # and at the same time
        defer.ensureDeferred(inserter.insert(
            BuildRecord(name="app", version=str(n), timestamp=1.0), now=float(n)
        )) for n in range(20)
    ]
    at_once += [defer.ensureDeferred(deleter.delete("old", str(n), "ops", "why", now=float(n)))
                for n in range(6, 16)]
    await defer.gatherResults(at_once)
    entries = [json.loads(served_entry(row)) for row in await inserter.chain(0, 1000)]
    count, _, broken = verify_entries(entries)
    assert (count, broken) == (58, None)
    assert [e["seq"] for e in entries] == list(range(1, 59))
    assert [e["kind"] for e in entries[16:28]] == ["record", "tombstone"] * 6
    await first.stop()
    await second.stop()
