"""Who may write where: the one authorisation every write to the repository goes through.

Three places decide whether a write may go ahead: the resource (PUT, MKCOL, DELETE in
Buildbot's web server), the streaming request on the repository's own port (a PUT
decided from its headers, before its body), and ``/.farm-auth`` (nginx's
``auth_request`` in front of the repository). Each calls :func:`write_target` for the
path and :func:`authorise_write` or :func:`authorise_put`, and turns a
:class:`WriteRefused` into its answer; so the rules and the messages are the same for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from buildbot_farm.artifacts import paths, tokens
from buildbot_farm.artifacts.paths import Segments, UnsafePath
from buildbot_farm.artifacts.repository import OutOfScope, Repository
from buildbot_farm.artifacts.store import Grant, TokenRefused

NOTHING_WRITTEN = "; nothing was written"


class WriteRefused(Exception):
    """A write that may not go ahead: HTTP ``status``, a message for the client, and
    whether the answer asks for credentials (``WWW-Authenticate``)."""

    def __init__(self, status: int, message: str, realm: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.realm = realm


@dataclass(frozen=True)
class PutAccess:
    """A PUT that may go ahead: where, under which grant, and the sha256 the client
    announced (None when it announced none)."""

    segments: Segments
    grant: Grant
    expected_sha256: str | None


def write_target(raw_segments: list[bytes], unsafe_status: int = 400) -> tuple[Segments, bool]:
    """The safe segments of a write's (percent-encoded) path and whether it ended in ``/``.

    An unsafe path is refused with ``unsafe_status``.
    """
    try:
        return paths.split_request_path(raw_segments)
    except UnsafePath as e:
        raise WriteRefused(unsafe_status, f"unsafe path: {e}") from e


async def authorise_write(
    repository: Repository, authorization: bytes | None, segments: Segments
) -> Grant:
    """The grant of the request's token for writing ``segments``; else 401 or 403."""
    try:
        return await repository.authorise(authorization, segments)
    except TokenRefused as e:
        raise WriteRefused(401, f"{e}{NOTHING_WRITTEN}", realm=True) from e
    except OutOfScope as e:
        raise WriteRefused(403, f"{e}{NOTHING_WRITTEN}") from e


async def authorise_put(
    repository: Repository, segments: Segments, trailing: bool, headers: Any,
    length: int | None,
) -> PutAccess:
    """Whether a PUT of ``length`` bytes (None: not announced) with request ``headers``
    (twisted ``Headers``) may write the file ``segments``; else :class:`WriteRefused`
    (405 for a collection, 401/403 for the token, 413 for the size, 400 for the digest)."""
    if not segments or trailing:
        raise WriteRefused(405, "PUT needs a file path, not a collection")
    authorization = headers.getRawHeaders(b"authorization")
    grant = await authorise_write(repository, authorization[-1] if authorization else None,
                                  segments)
    limit = repository.config.max_upload_size
    if length is not None and length > limit:
        raise WriteRefused(413, f"the upload is larger than {limit} bytes{NOTHING_WRITTEN}")
    named = {k.decode("latin-1").lower(): v[-1] for k, v in headers.getAllRawHeaders()}
    try:
        expected = tokens.client_sha256(named)
    except tokens.BadDigest as e:
        raise WriteRefused(400, str(e)) from e
    return PutAccess(segments, grant, expected)


def declared_length(headers: Any) -> int | None:
    """The request's Content-Length when it is a number; else None."""
    values = headers.getRawHeaders(b"content-length")
    return int(values[-1]) if values and values[-1].isdigit() else None
