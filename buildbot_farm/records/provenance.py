"""SLSA provenance for a record: an in-toto Statement v1 in a DSSE envelope, Ed25519-signed.

Pure: no buildbot, no twisted. :func:`statement` describes a record; :class:`Signer`
wraps it in a signed envelope; :func:`verify_envelope` checks one against a public key.
The envelopes are securesystemslib's (its DSSE ``Envelope``, ``CryptoSigner`` and
``SSlibKey``); keys stay PEM files (PKCS#8 private, SubjectPublicKeyInfo public) and key
ids stay the sha256 of the raw public key, so envelopes signed before verify the same.
"""

from __future__ import annotations

import binascii
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import FormatError, VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

from buildbot_farm.records.model import Binary, BuildRecord, rfc3339

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "urn:buildbot-farm:build-record:v1"


class VerificationFailed(Exception):
    """An envelope that is malformed, or not signed by the given key."""


class NothingToAttest(ValueError):
    """A record none of whose binaries has a digest: a statement needs at least one subject."""


def _descriptor(binary: Binary) -> dict[str, Any]:
    described: dict[str, Any] = {
        "name": binary.path or binary.url.rsplit("/", 1)[-1] or binary.url, "uri": binary.url,
    }
    if binary.sha256:
        described["digest"] = {"sha256": binary.sha256}
    return described


def statement(record: BuildRecord, builder_id: str) -> dict[str, Any]:
    """The in-toto Statement v1 with a SLSA provenance v1 predicate describing ``record``.

    Subjects are the binaries with their sha256 (a binary without one is not attested);
    byproducts (a container task's archive and manifest) are the run's byproducts; the
    resolved dependency is the source with its commit (``gitCommit`` digest).
    ``builder_id`` names the Buildbot master. Raises :class:`NothingToAttest` when no
    binary has a digest.
    """
    subjects = [_descriptor(b) for b in record.binaries if b.sha256]
    if not subjects:
        raise NothingToAttest("this record names no digest, so there is nothing to attest")
    dependencies = []
    if record.source and record.commit:
        repository = str(record.source.get("repository", ""))
        uri = repository if repository.startswith("git+") else f"git+{repository}"
        dependency: dict[str, Any] = {"uri": uri, "digest": {"gitCommit": record.commit}}
        if record.source.get("branch"):
            dependency["annotations"] = {"branch": record.source["branch"]}
        dependencies.append(dependency)
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "name": record.name,
                    "version": record.version,
                    "sourceUrl": record.source_url,
                },
                "internalParameters": {"environment": record.environment},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": builder_id},
                "metadata": {
                    "invocationId": record.build_url or f"{record.name}/{record.version}",
                    "finishedOn": rfc3339(record.timestamp),
                },
                "byproducts": [_descriptor(b) for b in record.byproducts],
            },
        },
    }


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key id put in signatures: sha256 of the raw public key, in hex."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sslib_key(public_key: Ed25519PublicKey) -> SSlibKey:
    """``public_key`` as securesystemslib's key, under the farm's :func:`key_id`."""
    return SSlibKey.from_crypto(public_key, keyid=key_id(public_key))


class Signer:
    """Signs statements with one Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)
        self._signer = CryptoSigner(private_key, sslib_key(self.public_key))

    @classmethod
    def from_file(cls, path: Path, create: bool = False) -> Signer:
        """Load a PEM (PKCS#8) Ed25519 key; with ``create``, make one (mode 0600) if missing."""
        if create and not path.exists():
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_bytes(pem)
            return cls(key)
        try:
            return cls.from_pem(path.read_bytes())
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    @classmethod
    def from_pem(cls, pem: bytes) -> Signer:
        """Use the PEM (PKCS#8) Ed25519 key ``pem``; ValueError (not showing it) otherwise."""
        return cls(load_private_key(pem))

    def public_pem(self) -> bytes:
        """The public key as PEM (SubjectPublicKeyInfo), for ``buildbot-farm verify``."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def envelope(self, document: dict[str, Any]) -> dict[str, Any]:
        """``document`` as a DSSE envelope signed with this key."""
        payload = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        envelope = Envelope(payload, PAYLOAD_TYPE, {})
        envelope.sign(self._signer)
        signed: dict[str, Any] = envelope.to_dict()
        return signed


def signed_provenance(signer: Signer, record: BuildRecord, builder_id: str) -> bytes:
    """The DSSE envelope of ``record``'s statement as the bytes stored and served (signed once)."""
    envelope = signer.envelope(statement(record, builder_id))
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    """Read an unencrypted PEM (PKCS#8) Ed25519 private key; ValueError (not showing it) if not."""
    try:
        loaded = serialization.load_pem_private_key(pem, password=None)
    except TypeError as e:  # an encrypted key
        raise ValueError(str(e)) from e
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"it holds a {type(loaded).__name__}, not an Ed25519 key")
    return loaded


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """Read a PEM public key; raise ``ValueError`` unless it is Ed25519."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"the public key is a {type(key).__name__}, not Ed25519")
    return key


def verify_envelope(envelope: Any, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """Check that ``envelope`` is signed by ``public_key``; return the statement it carries.

    Raises :class:`VerificationFailed` saying what is wrong.
    """
    if not isinstance(envelope, dict):
        raise VerificationFailed("not a DSSE envelope: expected a JSON object")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise VerificationFailed(f"payloadType is not {PAYLOAD_TYPE}")
    try:
        parsed = Envelope.from_dict(copy.deepcopy(envelope))
    except (KeyError, TypeError, AttributeError, ValueError, binascii.Error, FormatError) as e:
        raise VerificationFailed(f"malformed envelope: {type(e).__name__}: {e}") from e
    try:
        parsed.verify([sslib_key(public_key)], 1)
    except VerificationError as e:
        raise VerificationFailed(
            "no signature in the envelope was made by this public key") from e
    try:
        document = json.loads(parsed.payload)
    except ValueError as e:
        raise VerificationFailed(f"the signed payload is not JSON: {e}") from e
    if not isinstance(document, dict) or document.get("_type") != STATEMENT_TYPE:
        raise VerificationFailed("the signed payload is not an in-toto Statement v1")
    return document
