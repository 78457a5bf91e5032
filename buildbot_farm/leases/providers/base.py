"""The interface every buildlet provider implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable

# Seconds a new agent lives (``--deadline``) unless its coordinator sets its deadline: this
# covers its start; the coordinator sets the real one as soon as the agent is ready.
AGENT_START_DEADLINE = 300.0


class ProviderError(Exception):
    """A provider could not start or destroy a buildlet; the message says why."""


@dataclass(frozen=True)
class StartedBuildlet:
    """A buildlet whose agent answers at ``url``; ``handle`` is the provider's reference."""

    url: str
    handle: str


class BuildletProvider(abc.ABC):
    """Starts and destroys the buildlets of one or more types.

    ``handle`` strings are the provider's own (JSON is usual); the coordinator stores them
    in the farm database and hands them back after a restart, so they must be enough to
    find and destroy the buildlet without any memory of this process.
    """

    kind: str

    @abc.abstractmethod
    async def start(
        self, name: str, secret: str, on_handle: Callable[[str], object]
    ) -> StartedBuildlet:
        """Start a buildlet whose agent accepts ``secret``; return once the agent listens.

        ``on_handle`` is called with the handle as soon as it exists, before the agent is
        ready, so that a crash while waiting cannot leave an untracked buildlet.
        """

    @abc.abstractmethod
    async def destroy(self, handle: str) -> None:
        """Destroy the buildlet and everything it left; quiet when it is already gone."""

    @abc.abstractmethod
    async def reap(self, known_handles: set[str]) -> list[str]:
        """Destroy this provider's buildlets whose handles are not in ``known_handles``.

        Returns a description of each one reaped, for the log.
        """

    def watch(self, lost: Callable[[list[str], str], object]) -> None:
        """Start watching the machines the buildlets run on, if the provider has any to watch:
        ``lost(names, reason)`` is called with the buildlets lost when one stops answering
        (the docker provider over several hosts does; the others have nothing to watch)."""
        del lost  # nothing to watch here

    def unwatch(self) -> None:
        """Stop what :meth:`watch` started."""
        return None  # nothing was started here
