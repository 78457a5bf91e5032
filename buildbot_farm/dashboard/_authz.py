"""``FarmEndpointMatcher``: a Buildbot authz rule for the farm dashboard's actions only."""

from __future__ import annotations

from typing import Any

from buildbot.www.authz.endpointmatchers import EndpointMatcherBase, Match
from twisted.internet import defer

FARM_ENDPOINT = "farm"


class FarmEndpointMatcher(EndpointMatcherBase):
    """Matches the farm's control actions (e.g. destroying a buildlet), nothing of Buildbot's.

    Put ``FarmEndpointMatcher(role="admins")`` in ``util.Authz(allowRules=[...])`` to keep
    the farm's admin actions to admins while leaving Buildbot's own endpoints to other
    rules. ``util.AnyControlEndpointMatcher`` matches the farm's actions as well.
    """

    def match(
        self, ep: Any, action: str = "get", options: dict[str, Any] | None = None
    ) -> defer.Deferred[Match | None]:
        """A match for a non-``get`` action on an endpoint path starting with ``farm``."""
        if tuple(ep[:1]) == (FARM_ENDPOINT,) and action.lower() != "get":
            return defer.succeed(Match(self.master))
        return defer.succeed(None)
