"""Form tokens: the CSRF protection of the dashboard's admin forms.

Buildbot's session cookie is a signed claim of who the user is, re-issued on every
response, so there is no stable session id to tie a token to. A form token is instead an
expiry time signed by itsdangerous (HMAC-SHA256) under a secret of this master process,
salted with the user's name and the form's action: another site cannot read it from our
pages, and one user's token does not work for another user, another action or after
``TOKEN_LIFETIME``. A master restart makes new secrets, so pages opened before it must be
reloaded.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from itsdangerous import BadSignature, Signer

FIELD = "form_token"
TOKEN_LIFETIME = 8 * 3600.0
ANONYMOUS = "anonymous"


class FormRefused(Exception):
    """A POST whose form token is missing, malformed, expired or not this user's."""


def user_of(request: Any) -> str:
    """Who Buildbot's session says is asking: the user name, else ``anonymous``."""
    info = getattr(request.getSession(), "user_info", None) or {}
    return str(info.get("username") or info.get("email") or ANONYMOUS)


class FormTokens:
    """Issues and checks form tokens under ``secret`` (random per process when None)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def _signer(self, user: str, action: str) -> Signer:
        salt = f"farm form token\n{user}\n{action}".encode("utf-8", "surrogateescape")
        return Signer(self._secret, salt=salt, digest_method=hashlib.sha256)

    def issue(self, user: str, action: str, now: float) -> str:
        """A token letting ``user`` post the form ``action`` until ``TOKEN_LIFETIME`` from now."""
        return self._signer(user, action).sign(str(int(now + TOKEN_LIFETIME))).decode()

    def check(self, user: str, action: str, presented: str | None, now: float) -> None:
        """Return when ``presented`` is a live token of ``user`` for ``action``; else refuse.

        Raises :class:`FormRefused` with a message that says what to do (reload the page).
        """
        if not presented:
            raise FormRefused(
                f"this form came without its {FIELD} (the protection against forged"
                " requests from other sites); open the page and use its button")
        try:
            expires_text = self._signer(user, action).unsign(presented).decode()
        except (BadSignature, UnicodeError):
            raise FormRefused(
                f"this form's {FIELD} is not valid for {user} (the page was opened by"
                " another user or before the master restarted); reload the page and try again"
            ) from None
        if int(expires_text) <= now:
            raise FormRefused(f"this form's {FIELD} has expired; reload the page and try again")
