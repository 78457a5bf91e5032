"""The names the farm is known by in Buildbot, in one place.

Steps, workers, schedulers, reporters, the www plugin and ``buildbot checkconfig`` must all
agree on these; a module that needs one imports it from here.
"""

from __future__ import annotations

__all__ = ["ARTIFACTS_PROPERTY", "FARM_SERVICE", "WWW_PLUGIN"]

#: The name of ``util.FarmService`` among the master's services (``c['services']``).
FARM_SERVICE = "farm"
#: The ``buildbot.www`` plugin that serves the farm's API: ``c['www']['plugins']['farm']``.
WWW_PLUGIN = "farm"
#: The build property listing the artifacts a build uploaded (``{"path", "url", ...}``).
ARTIFACTS_PROPERTY = "farm_artifacts"
