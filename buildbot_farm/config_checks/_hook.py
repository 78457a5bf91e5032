"""How the cross-object checks join the loading of master.cfg: a configurator it did not write.

See the package docstring for why this is the hook.
"""

from __future__ import annotations

from typing import Any

from buildbot.interfaces import IConfigurator
from zope.interface import implementer

from buildbot_farm.compat.buildbot_api import config_being_loaded

CONFIGURATORS = "configurators"


@implementer(IConfigurator)
class FarmConfigCheck:
    """Checks the farm objects of a whole configuration against each other.

    Buildbot runs ``c['configurators']`` first when it loads a configuration (for
    ``buildbot checkconfig``, the master's start and each reconfig), inside the loader that
    collects config errors. :func:`watch_config` puts one there for the master.cfg being run.
    """

    def configure(self, config_dict: dict[str, Any]) -> None:
        """Report each cross-object mistake of ``config_dict`` as a config error."""
        # Imported here: the farm classes this module checks import this package (for their
        # keyword checks), so importing them at the top would be circular.
        from buildbot_farm.config_checks._cross import check

        check(config_dict)


def watch_config() -> None:
    """Have the configuration being loaded checked by a :class:`FarmConfigCheck`.

    Called by each farm object master.cfg constructs; does nothing outside master.cfg and
    adds one check per configuration (again if master.cfg replaced ``c['configurators']``).
    """
    config_dict = config_being_loaded()
    if config_dict is None:
        return
    configurators = config_dict.setdefault(CONFIGURATORS, [])
    if not isinstance(configurators, (list, tuple)) or any(
        isinstance(c, FarmConfigCheck) for c in configurators
    ):
        return  # Buildbot reports a c['configurators'] that is not a list
    if isinstance(configurators, list):
        configurators.append(FarmConfigCheck())  # in place: master.cfg may hold the list
    else:
        config_dict[CONFIGURATORS] = [*configurators, FarmConfigCheck()]
