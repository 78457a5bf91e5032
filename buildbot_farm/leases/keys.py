"""Per-user keys of the coordinator, and HTTP Basic credentials (pure logic).

A user's key is ``hex(HMAC-SHA256(coordinator secret, "user-NAME"))``: the coordinator
stores no user list, an admin hands out keys with ``buildbot-farm key user-NAME``, and
rotating the secret revokes every key at once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

USER_PATTERN = re.compile(r"^user-[a-z0-9][a-z0-9_.-]{0,62}$")
# Go's remote-buildlet document names the user of proxied requests buildlet-NAME: the same user.
PROXY_USER_PREFIX = "buildlet-"


class BadCredentials(Exception):
    """Missing, malformed or wrong credentials; the message says which."""


def user_key(secret: bytes, user: str) -> str:
    """The key of ``user`` (``user-NAME``) under the coordinator ``secret``."""
    check_user(user)
    return hmac.new(secret, user.encode(), hashlib.sha256).hexdigest()


def check_user(user: str) -> None:
    """Raise ValueError unless ``user`` looks like ``user-NAME`` (lower case, digits, ._-)."""
    if not USER_PATTERN.match(user):
        raise ValueError(
            f"user {user!r} must look like 'user-NAME' (lower-case letters, digits, '.', '_', '-')"
        )


def parse_basic(header: bytes | None) -> tuple[str, str]:
    """Split an ``Authorization: Basic ...`` header into (user, password)."""
    if not header:
        raise BadCredentials("no credentials: send HTTP Basic auth as user-NAME and your key")
    scheme, _, encoded = header.partition(b" ")
    if scheme.lower() != b"basic":
        raise BadCredentials("only HTTP Basic auth is accepted (user-NAME and your key)")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as e:
        raise BadCredentials("the Basic auth header is not valid base64 text") from e
    user, sep, password = decoded.partition(":")
    if not sep:
        raise BadCredentials("the Basic auth credentials have no ':' between user and key")
    return user, password


def authenticate(secret: bytes, header: bytes | None, proxied: bool = False) -> str:
    """Return the user named by a Basic auth header whose key is right, or raise BadCredentials.

    With ``proxied`` (a request for a buildlet's agent), ``buildlet-NAME`` is ``user-NAME``.
    Keys are compared in constant time.
    """
    user, password = parse_basic(header)
    if proxied and user.startswith(PROXY_USER_PREFIX):
        user = "user-" + user[len(PROXY_USER_PREFIX):]
    try:
        expected = user_key(secret, user)
    except ValueError as e:
        raise BadCredentials(str(e)) from e
    if not hmac.compare_digest(expected.encode(), password.encode()):
        raise BadCredentials(f"wrong key for {user}: ask the farm's admin for yours")
    return user
