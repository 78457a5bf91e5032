"""Container tasks: ``steps.ContainerTask`` runs a command in a fresh container.

The step copies inputs from the worker's build directory into a new, network-less container,
streams its output live into the step log, and brings the files it changed back to the
worker as one zstd-compressed tar. See docs/container-tasks.md.
"""

from __future__ import annotations

from buildbot_farm.containers._reaper import reap_leftovers
from buildbot_farm.containers._step import ContainerTask

__all__ = ["ContainerTask", "reap_leftovers"]
