"""Upload tokens and request credentials; pure logic, no buildbot or twisted.web imports.

A token is 32 random bytes, given to one build and stored only as its sha256. Clients
present it as HTTP Basic (user ``build-ID``, password the token) or as a Bearer token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass

USER_PREFIX = "build-"
_USER = re.compile(r"build-([1-9][0-9]{0,17})\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


class BadCredentials(ValueError):
    """An Authorization header that is malformed or of an unknown scheme."""


class BadDigest(ValueError):
    """A client digest header that cannot be read (unknown algorithm, bad encoding)."""


@dataclass(frozen=True)
class Credentials:
    """What a request presented: the token and, with Basic, the build id it claimed."""

    token: str
    build_id: int | None


def new_token() -> str:
    """A fresh random token (256 bits as hex: never begins with "-", which a command line
    would take for an option, and needs no quoting in a URL or a header)."""
    return secrets.token_hex(32)


def token_hash(token: str) -> str:
    """The hex sha256 under which a token is stored; the token itself is never stored."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def user_for(build_id: int) -> str:
    """The Basic user name of a build's token (``build-ID``)."""
    return f"{USER_PREFIX}{build_id}"


def parse_authorization(header: bytes | None) -> Credentials | None:
    """Read an ``Authorization`` header; None when there is none.

    Raises :class:`BadCredentials` for an unknown scheme, bad base64 or a Basic user that
    is not ``build-ID``.
    """
    if not header:
        return None
    scheme, _, value = header.strip().partition(b" ")
    value = value.strip()
    if scheme.lower() == b"bearer" and value:
        return Credentials(value.decode("latin-1"), None)
    if scheme.lower() == b"basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as e:
            raise BadCredentials("the Basic credentials are not valid base64 UTF-8") from e
        user, colon, password = decoded.partition(":")
        match = _USER.match(user)
        if not colon or match is None:
            raise BadCredentials("the Basic user must be build-ID, the id of your build")
        return Credentials(password, int(match.group(1)))
    raise BadCredentials("use Basic (build-ID:TOKEN) or Bearer TOKEN authorization")


def client_sha256(headers: dict[str, bytes]) -> str | None:
    """The sha256 a client announced for its upload, as hex; None when it gave none.

    Understood: ``Content-Digest: sha-256=:B64:`` (RFC 9530), ``Digest: SHA-256=B64``
    (RFC 3230) and ``X-Checksum-Sha256: HEX``. Keys of ``headers`` are lower-case.
    Other algorithms alone are ignored; a sha-256 that cannot be decoded is an error.
    """
    hex_value = headers.get("x-checksum-sha256")
    if hex_value is not None:
        text = hex_value.decode("latin-1").strip().lower()
        if not _HEX64.match(text):
            raise BadDigest("X-Checksum-Sha256 must be 64 hexadecimal digits")
        return text
    for name in ("content-digest", "digest"):
        raw = headers.get(name)
        if raw is None:
            continue
        for item in raw.decode("latin-1").split(","):
            algorithm, _, value = item.strip().partition("=")
            if algorithm.strip().lower() != "sha-256":
                continue
            try:
                digest = base64.b64decode(value.strip().strip(":"), validate=True)
            except binascii.Error as e:
                raise BadDigest(f"{name}: sha-256 is not valid base64") from e
            if len(digest) != 32:
                raise BadDigest(f"{name}: sha-256 must be 32 bytes, not {len(digest)}")
            return digest.hex()
    return None
