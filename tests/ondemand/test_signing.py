"""Artifact signatures: a key made on first use, signatures that verify only their digest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from buildbot_farm.ondemand.signing import ArtifactSigner, verify_digest

DIGEST = hashlib.sha256(b"tool").hexdigest()


def test_a_missing_key_is_created_with_its_public_half(tmp_path: Path) -> None:
    """The first load writes the private key (mode 0600) and a .pub; the second reuses them."""
    path = tmp_path / "keys" / "signing.pem"
    first = ArtifactSigner.thd_from_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys" / "signing.pem.pub").read_bytes() == first.public_pem
    assert ArtifactSigner.thd_from_file(path).public_pem == first.public_pem


def test_a_signature_verifies_its_digest_only(tmp_path: Path) -> None:
    """The signature checks out for its digest and not for another one or another key."""
    signer = ArtifactSigner.thd_from_file(tmp_path / "a.pem")
    other = ArtifactSigner.thd_from_file(tmp_path / "b.pem")
    signature = signer.sign_digest(DIGEST)
    assert verify_digest(signer.public_pem, DIGEST, signature)
    assert not verify_digest(signer.public_pem, hashlib.sha256(b"x").hexdigest(), signature)
    assert not verify_digest(other.public_pem, DIGEST, signature)


def test_a_key_of_another_kind_is_refused(tmp_path: Path) -> None:
    """A PEM that is not an Ed25519 private key is an error naming the file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "ec.pem"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(ValueError, match="not an Ed25519 key"):
        ArtifactSigner.thd_from_file(path)
