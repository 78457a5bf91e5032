"""AWS Signature Version 4 for requests to S3-compatible object storage.

Header-based signing only (no presigned URLs, no chunked payload signing): the caller
knows the payload's sha256 before sending, which the artifact repository always does
because uploads are spooled and hashed first. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_UNRESERVED = "-_.~"


@dataclass(frozen=True)
class Credentials:
    """An access key pair and where it signs: ``region`` and ``service`` (``s3``)."""

    access_key: str
    secret_key: str
    region: str
    service: str = "s3"


def uri_encode(text: str, keep_slash: bool = False) -> str:
    """Percent-encode ``text`` the way SigV4 wants: everything but ``A-Za-z0-9-_.~``."""
    return quote(text, safe=_UNRESERVED + ("/" if keep_slash else ""))


def canonical_query(query: Iterable[tuple[str, str]]) -> str:
    """The query string, encoded and sorted by name then value."""
    encoded = sorted((uri_encode(name), uri_encode(value)) for name, value in query)
    return "&".join(f"{name}={value}" for name, value in encoded)


def _canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    cleaned = {name.lower().strip(): " ".join(value.split()) for name, value in headers.items()}
    names = sorted(cleaned)
    return "".join(f"{name}:{cleaned[name]}\n" for name in names), ";".join(names)


def canonical_request(
    method: str, path: str, query: Iterable[tuple[str, str]], headers: Mapping[str, str],
    payload_sha256: str,
) -> tuple[str, str]:
    """The canonical request and the signed header list, for an already-decoded ``path``.

    Every header given is signed; ``path`` is encoded once (S3 never double-encodes).
    """
    header_block, signed = _canonical_headers(headers)
    text = "\n".join([method, uri_encode(path, keep_slash=True), canonical_query(query),
                      header_block, signed, payload_sha256])
    return text, signed


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """The key derived for one day (``YYYYMMDD``), region and service."""
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def amz_date(moment: datetime) -> str:
    """``moment`` as SigV4's ``YYYYMMDDTHHMMSSZ`` in UTC."""
    return moment.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def sign(
    credentials: Credentials, method: str, path: str, query: Iterable[tuple[str, str]],
    headers: Mapping[str, str], payload_sha256: str, moment: datetime,
) -> dict[str, str]:
    """``headers`` plus ``x-amz-date``, ``x-amz-content-sha256`` and ``Authorization``.

    ``headers`` must include ``host``; every header in it is signed, so give only the
    ones that will be sent unchanged.
    """
    stamp = amz_date(moment)
    wanted = {**headers, "x-amz-date": stamp, "x-amz-content-sha256": payload_sha256}
    text, signed = canonical_request(method, path, query, wanted, payload_sha256)
    scope = f"{stamp[:8]}/{credentials.region}/{credentials.service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(text.encode()).hexdigest()])
    key = signing_key(credentials.secret_key, stamp[:8], credentials.region, credentials.service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    wanted["authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{scope},"
        f"SignedHeaders={signed},Signature={signature}"
    )
    return wanted
