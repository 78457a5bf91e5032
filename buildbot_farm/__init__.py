"""buildbot_farm: a Buildbot plugin that turns a master into a build farm.

The classes users write in master.cfg are reached through ``buildbot.plugins``
(``util.FarmService`` and the capabilities that grow around it); this package
root only carries the version.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
