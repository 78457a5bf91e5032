"""The ``reverse`` provider: hosts join the pool themselves (``buildbot-farm agent --register``).

Nothing is started here: a host runs its agent and registers it with the coordinator,
which leases it like any idle buildlet. Destroying one halts its agent; the host's
``buildbot-farm agent`` then starts a fresh agent (clean work dir) and registers again.
"""

from __future__ import annotations

import json
from typing import Callable

from buildbot_farm.leases.agent_client import AgentClient, AgentError
from buildbot_farm.leases.providers.base import BuildletProvider, ProviderError, StartedBuildlet


class ReverseProvider(BuildletProvider):
    """Buildlets are hosts that registered themselves; ``agents`` halts them."""

    kind = "reverse"

    def __init__(self, agents: AgentClient) -> None:
        self._agents = agents

    async def start(
        self, name: str, secret: str, on_handle: Callable[[str], object]
    ) -> StartedBuildlet:
        """Refuse: reverse buildlets come from hosts registering, never from the coordinator."""
        raise ProviderError(
            "reverse buildlets cannot be started by the coordinator; a host joins with "
            "`buildbot-farm agent --register URL --type TYPE`"
        )

    async def destroy(self, handle: str) -> None:
        """Halt the host's agent (its host then re-registers a fresh one)."""
        details = json.loads(handle)
        try:
            await self._agents.halt(details["url"], details["secret"])
        except AgentError:
            return

    async def reap(self, known_handles: set[str]) -> list[str]:
        """Nothing to reap: an unknown host's agent is not ours to stop."""
        return []
