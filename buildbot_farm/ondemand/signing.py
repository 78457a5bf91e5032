"""Detached Ed25519 signatures of on-demand artifacts (``GET /api/download/{key}.sig``).

The signature is over the artifact's raw sha256 digest (32 bytes), so a client verifies
it with the file's digest and the master's public key, without a second download.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from buildbot_farm.records.provenance import load_private_key


class ArtifactSigner:
    """Signs artifact digests with one Ed25519 key; ``public_pem`` verifies them."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_pem = private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def thd_from_file(cls, path: Path) -> ArtifactSigner:
        """Load the PEM (PKCS#8) key at ``path``, creating it (mode 0600) and ``.pub`` if missing.

        Raises ValueError when the file holds another kind of key. Blocking: file I/O.
        """
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        try:
            signer = cls(load_private_key(path.read_bytes()))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        public = path.with_name(path.name + ".pub")
        if not public.exists():
            public.write_bytes(signer.public_pem)
        return signer

    @classmethod
    def from_pem(cls, pem: bytes) -> ArtifactSigner:
        """Use the PEM (PKCS#8) Ed25519 key ``pem``; ValueError (not showing it) otherwise."""
        return cls(load_private_key(pem))

    def sign_digest(self, sha256_hex: str) -> bytes:
        """The 64-byte signature of the digest whose hex form is ``sha256_hex``."""
        return self._key.sign(bytes.fromhex(sha256_hex))


def verify_digest(public_pem: bytes, sha256_hex: str, signature: bytes) -> bool:
    """Whether ``signature`` is the public key's signature of the digest ``sha256_hex``."""
    key = serialization.load_pem_public_key(public_pem)
    if not isinstance(key, Ed25519PublicKey):
        return False
    try:
        key.verify(signature, bytes.fromhex(sha256_hex))
    except Exception:
        return False
    return True
