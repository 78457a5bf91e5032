"""The pure parts of records: source URLs, validation, provenance signing and verifying."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from buildbot_farm.records.model import InvalidRecord, default_version, parse_record
from buildbot_farm.records.provenance import (
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    Signer,
    VerificationFailed,
    statement,
    verify_envelope,
)
from buildbot_farm.records.source import choose_source, commit_url
from buildbot_farm.records.verify_cli import verify_file

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("repository", "expected"),
    [
        ("https://github.com/o/r.git", f"https://github.com/o/r/commit/{SHA}"),
        ("git@github.com:o/r.git", f"https://github.com/o/r/commit/{SHA}"),
        ("ssh://git@gitlab.example.com:2222/g/sub/r.git",
         f"https://gitlab.example.com/g/sub/r/-/commit/{SHA}"),
        ("https://codeberg.org/o/r", f"https://codeberg.org/o/r/commit/{SHA}"),
        ("https://gitea.local:3000/o/r.git", f"https://gitea.local:3000/o/r/commit/{SHA}"),
        ("https://bitbucket.org/o/r", f"https://bitbucket.org/o/r/commits/{SHA}"),
        ("https://git.example.org/r.git", f"git+https://git.example.org/r.git@{SHA}"),
        ("/srv/git/r.git", f"git+/srv/git/r.git@{SHA}"),
        ("file:///srv/git/r.git", f"git+file:///srv/git/r.git@{SHA}"),
    ],
)
def test_commit_urls_for_forges_and_plain_git(repository: str, expected: str) -> None:
    """Forge URLs point at the commit page; anything else is git+URL@COMMIT."""
    assert commit_url(repository, SHA) == expected


def test_forges_can_be_named_by_host() -> None:
    """A self-hosted forge on an unremarkable host name is recognised when configured."""
    url = commit_url("https://code.corp/o/r.git", SHA, {"code.corp": "gitlab"})
    assert url == f"https://code.corp/o/r/-/commit/{SHA}"


def test_the_first_stamp_with_a_revision_is_the_source() -> None:
    """Source stamps without a repository or revision are skipped."""
    source = choose_source([{"repository": "", "revision": "x"},
                            {"repository": "r", "revision": SHA, "branch": "main"}])
    assert source is not None
    assert source.commit == SHA
    assert source.branch == "main"
    assert choose_source([{"repository": "r", "revision": None}]) is None


def test_reference_names_are_accepted_and_answered() -> None:
    """A record in the reference's names round-trips with both sets of names."""
    record = parse_record({"Name": "svc", "Version": "20240501120000",
                           "TimeStamp": "2024-05-01T12:00:00Z", "Hostname": "h",
                           "GoVersion": "go1.22", "Language": "go"})
    body = record.as_json()
    assert body["name"] == body["Name"] == "svc"
    assert body["builtOn"] == "h"
    assert body["GoVersion"] == "go1.22"
    assert body["TimeStamp"] == 1714564800
    assert default_version(body["timestamp"]) == "20240501120000"


@pytest.mark.parametrize(
    ("body", "bad"),
    [
        ([], {"body"}),
        ({"name": "a/b", "version": "1", "timestamp": 1}, {"name"}),
        ({"name": "a", "version": "1", "timestamp": True}, {"timestamp"}),
        ({"name": "a", "Name": "b", "version": "1", "timestamp": 1}, {"Name"}),
        ({"name": "a", "version": "1", "timestamp": 1, "BinaryUrl": "http://x/y",
          "binaries": [{"url": "http://x/z"}]}, {"BinaryUrl"}),
        ({"name": "a", "version": "1", "timestamp": 1, "Language": "Python",
          "GoVersion": "1.22"}, {"GoVersion"}),
        ({"name": "a", "version": "1", "timestamp": 1, "environment": {"k": [1]}},
         {"environment"}),
        ({"name": "a", "version": "1", "timestamp": float("nan")}, {"timestamp"}),
        ({"name": "a", "version": "1", "timestamp": 1, "environment": {"k": float("nan")}},
         {"environment"}),
        ({"name": "a", "version": "1", "timestamp": 1, "result": "green",
          "binaries": [{"url": "http://x", "size": 1, "sha256": "AB"}]},
         {"result", "binaries[0].sha256"}),
    ],
)
def test_invalid_records_name_every_bad_field(body: object, bad: set[str]) -> None:
    """Validation reports each bad field by name, not just the first."""
    with pytest.raises(InvalidRecord) as raised:
        parse_record(body)
    assert set(raised.value.problems) == bad


def test_provenance_is_signed_and_verified(tmp_path: Path) -> None:
    """A signed statement verifies with its public key and fails with another or when altered."""
    signer = Signer.from_file(tmp_path / "key.pem", create=True)
    assert Signer.from_file(tmp_path / "key.pem").key_id == signer.key_id
    record = parse_record({
        "name": "app", "version": "1", "timestamp": 0,
        "source": {"repository": "https://github.com/o/r", "commit": SHA},
        "binaries": [{"url": "http://x/app.pyz", "size": 3, "sha256": "ab" * 32}],
    })
    envelope = signer.envelope(statement(record, "http://master/"))
    document = verify_envelope(envelope, signer.public_key)
    assert document["predicateType"] == PREDICATE_TYPE
    assert document["subject"] == [
        {"name": "app.pyz", "uri": "http://x/app.pyz", "digest": {"sha256": "ab" * 32}}
    ]
    dependency = document["predicate"]["buildDefinition"]["resolvedDependencies"][0]
    assert dependency == {"uri": "git+https://github.com/o/r", "digest": {"gitCommit": SHA}}
    other = Signer.from_file(tmp_path / "other.pem", create=True)
    with pytest.raises(VerificationFailed, match="no signature"):
        verify_envelope(envelope, other.public_key)
    forged = dict(envelope, payload=base64.b64encode(b'{"_type": "x"}').decode())
    with pytest.raises(VerificationFailed):
        verify_envelope(forged, signer.public_key)


def test_envelopes_and_keys_from_before_securesystemslib_still_verify(tmp_path: Path) -> None:
    """A key file and an envelope made the way the farm made them by hand (PKCS#8 PEM,
    key id = sha256 of the raw public key, base64 signature over DSSE's PAE) load and
    verify; the same envelope with its payload changed does not."""
    private = Ed25519PrivateKey.generate()
    (tmp_path / "key.pem").write_bytes(private.private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    document = {"_type": "https://in-toto.io/Statement/v1", "subject": []}
    payload = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    kind = PAYLOAD_TYPE.encode()
    signed = b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)
    old: dict[str, Any] = {
        "payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": hashlib.sha256(raw).hexdigest(),
                        "sig": base64.b64encode(private.sign(signed)).decode()}],
    }
    signer = Signer.from_file(tmp_path / "key.pem")
    assert signer.key_id == old["signatures"][0]["keyid"]
    assert verify_envelope(old, signer.public_key) == document
    assert signer.envelope(document)["signatures"] == old["signatures"]  # Ed25519: same sig
    tampered = dict(old, payload=base64.b64encode(payload.replace(b"[]", b"[1]")).decode())
    with pytest.raises(VerificationFailed, match="no signature"):
        verify_envelope(tampered, signer.public_key)
    for broken in ({**old, "payload": "%%%"}, {**old, "signatures": [{"sig": "AA=="}]},
                   {**old, "signatures": "x"}):
        with pytest.raises(VerificationFailed, match="malformed envelope"):
            verify_envelope(broken, signer.public_key)


def test_verify_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """buildbot-farm verify exits 0 for a good envelope and 1, saying why, for a bad one."""
    signer = Signer.from_file(tmp_path / "key.pem", create=True)
    (tmp_path / "key.pub").write_bytes(signer.public_pem())
    record = parse_record({"name": "app", "version": "1", "timestamp": 0, "binaries": [
        {"url": "https://x/app", "size": 1, "sha256": "0" * 64}]})
    good = tmp_path / "good.json"
    good.write_text(json.dumps(signer.envelope(statement(record, "b"))))
    assert verify_file(good, tmp_path / "key.pub") == 0
    (tmp_path / "bad.json").write_text("{}")
    assert verify_file(tmp_path / "bad.json", tmp_path / "key.pub") == 1
    assert "NOT VERIFIED" in capsys.readouterr().err
