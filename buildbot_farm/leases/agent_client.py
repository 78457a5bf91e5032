"""``AgentClient``: the coordinator's direct line to buildlet agents (status, deadline, halt)."""

from __future__ import annotations

import json
from typing import Any

from buildbot_farm.remote.protocol import SECRET_HEADER


class AgentError(Exception):
    """An agent did not answer, or answered with an error."""


class AgentClient:
    """Talks to agents through ``http``, a treq ``HTTPClient`` (or a StubTreq)."""

    def __init__(self, http: Any, timeout: float = 5.0) -> None:
        self._http = http
        self._timeout = timeout

    async def status(self, url: str, secret: str) -> dict[str, Any]:
        """The agent's ``GET /status``; AgentError when it does not answer within the timeout."""
        try:
            response = await self._http.get(
                url.rstrip("/") + "/status",
                headers={SECRET_HEADER: secret},
                timeout=self._timeout,
            )
            body = await response.content()
        except Exception as e:
            raise AgentError(f"agent at {url} did not answer: {e}") from e
        if response.code != 200:
            raise AgentError(f"agent at {url} answered {response.code}: {body[:200]!r}")
        return dict(json.loads(body))

    async def set_deadline(self, url: str, secret: str, seconds: float) -> None:
        """The agent's ``POST /deadline``: it halts itself unless renewed within ``seconds``."""
        try:
            response = await self._http.post(
                url.rstrip("/") + "/deadline",
                headers={SECRET_HEADER: secret},
                data={"seconds": f"{seconds:.3f}"},
                timeout=self._timeout,
            )
            body = await response.content()
        except Exception as e:
            raise AgentError(f"agent at {url} did not answer /deadline: {e}") from e
        if response.code != 200:
            raise AgentError(f"agent at {url} refused /deadline with {response.code}: "
                             f"{body[:200]!r}")

    async def halt(self, url: str, secret: str) -> None:
        """The agent's ``POST /halt``: it answers, then exits."""
        try:
            response = await self._http.post(
                url.rstrip("/") + "/halt", headers={SECRET_HEADER: secret}, timeout=self._timeout
            )
            await response.content()
        except Exception as e:
            raise AgentError(f"agent at {url} did not answer /halt: {e}") from e
        if response.code != 200:
            raise AgentError(f"agent at {url} refused /halt with {response.code}")
