"""The farm in Buildbot's web UI: a "Farm" menu entry and its server-rendered pages.

``farm_menu()`` goes into ``c['www']['plugins']['wsgi_dashboards']``; FarmService serves the
pages (:class:`DashboardResource`) at ``/plugins/farm/ui/``. See docs/web-ui.md.
"""

from __future__ import annotations

from buildbot_farm.dashboard._authz import FarmEndpointMatcher
from buildbot_farm.dashboard._menu import farm_dashboard, farm_menu
from buildbot_farm.dashboard._resource import DashboardResource

__all__ = ["DashboardResource", "FarmEndpointMatcher", "farm_dashboard", "farm_menu"]
