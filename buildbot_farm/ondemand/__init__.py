"""On-demand builds: one build per distinct request, served over HTTP and the web UI.

Users write ``schedulers.OnDemandScheduler(name, builder, parameters=[...])`` with
``util.OnDemandString``, ``util.OnDemandChoice`` and ``util.OnDemandList`` parameters;
``util.FarmService(on_demand=util.OnDemandBuilds(...))`` tunes retries and waits.
"""

from __future__ import annotations

from buildbot_farm.ondemand.config import OnDemandBuilds
from buildbot_farm.ondemand.params import (
    BadParameters,
    ChoiceParameter,
    ListParameter,
    Parameter,
    StringParameter,
    build_key,
    normalise,
)

__all__ = [
    "BadParameters",
    "ChoiceParameter",
    "ListParameter",
    "OnDemandBuilds",
    "Parameter",
    "StringParameter",
    "build_key",
    "normalise",
]
