"""The agent's errors, and reading query and form parameters (400 for bad ones)."""

from __future__ import annotations

import errno

# The HTTP status of a request that failed with an OSError of this errno (else 500).
OS_ERROR_STATUS = {errno.ENOENT: 404, errno.EACCES: 403, errno.EPERM: 403, errno.EEXIST: 409,
                   errno.ENOTDIR: 409, errno.EISDIR: 409, errno.ENOTEMPTY: 409,
                   errno.ENOSPC: 507, errno.EDQUOT: 507}


class AgentError(Exception):
    """A failed request: the HTTP status and the message the client gets as JSON."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class ArchiveError(AgentError):
    """A tar.gz body that is corrupt or would write outside its target; nothing was written."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class SetupError(Exception):
    """A command-line problem that stops the agent from starting."""


def single(params: dict[str, list[str]], name: str, default: str | None = None) -> str:
    """Return the one value of a query or form field; 400 if repeated or missing with no default."""
    values = params.get(name)
    if not values:
        if default is None:
            raise AgentError(400, f"missing parameter {name!r}")
        return default
    if len(values) > 1:
        raise AgentError(400, f"parameter {name!r} was given {len(values)} times; give it once")
    return values[0]


def flag(params: dict[str, list[str]], name: str) -> bool:
    """Return a boolean query field given as 1/true or 0/false (absent is false)."""
    value = single(params, name, "0").lower()
    if value not in ("1", "true", "0", "false", ""):
        raise AgentError(400, f"parameter {name!r} must be 1 or 0, not {value!r}")
    return value in ("1", "true")


def parse_mode(text: str) -> int:
    """Parse a permission given in decimal, as Go's buildlet client sends it (420 is 0644)."""
    mode = int(text, 10) if text.isdigit() else -1
    if not 0 <= mode <= 0o777:
        raise AgentError(400, f"mode {text!r} is not a decimal permission from 0 to 511, "
                              "e.g. 420 for 0644 or 493 for 0755")
    return mode

