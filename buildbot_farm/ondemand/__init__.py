"""On-demand builds: one build per distinct request, served over HTTP and the web UI.

Users write ``schedulers.OnDemandScheduler(name, builder, parameters=[...])`` with
``util.OnDemandString``, ``util.OnDemandChoice`` and ``util.OnDemandList`` parameters;
``util.FarmService(on_demand=util.OnDemandBuilds(...))`` tunes retries and waits.
"""

from __future__ import annotations

from buildbot_farm.config_checks import checked_keywords
from buildbot_farm.ondemand.config import OnDemandBuilds
from buildbot_farm.ondemand.model import (
    BadParameters,
    ChoiceParameter,
    ListParameter,
    Parameter,
    StringParameter,
    build_key,
    normalise,
)

# The parameters as master.cfg writes them (util.OnDemand*): their unknown keywords are
# config errors. Checked here, in the Buildbot-facing package, so that model.py stays pure.
checked_keywords("util.OnDemandString")(StringParameter)
checked_keywords("util.OnDemandChoice")(ChoiceParameter)
checked_keywords("util.OnDemandList")(ListParameter)

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
