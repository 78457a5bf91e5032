"""How the cross-object checks join the loading of master.cfg: a configurator it did not write.

See the package docstring for why this is the hook.
"""

from __future__ import annotations

from typing import Any

from buildbot import config
from buildbot.interfaces import IConfigurator
from zope.interface import implementer

from buildbot_farm.compat.buildbot_api import config_being_loaded
from buildbot_farm.config_checks._configuration import Configuration, CrossCheck

CONFIGURATORS = "configurators"


@implementer(IConfigurator)
class FarmConfigCheck:
    """Checks the farm objects of a whole configuration against each other.

    Buildbot runs ``c['configurators']`` first when it loads a configuration (for
    ``buildbot checkconfig``, the master's start and each reconfig), inside the loader that
    collects config errors. :func:`watch_config` puts one there for the master.cfg being run
    and hands it the checks of the farm objects master.cfg constructs.
    """

    def __init__(self) -> None:
        self.checks: list[CrossCheck] = []

    def add(self, check: CrossCheck) -> None:
        """Run ``check`` too (once, however many objects ask for it)."""
        if check not in self.checks:
            self.checks.append(check)

    def configure(self, config_dict: dict[str, Any]) -> None:
        """Report each cross-object mistake of ``config_dict`` as a config error."""
        configuration = Configuration.of(config_dict)
        for check in self.checks:
            for problem in check(configuration):
                config.error(problem)


def watch_config(*checks: CrossCheck) -> None:
    """Have the configuration being loaded checked by a :class:`FarmConfigCheck`, with
    ``checks`` among its checks.

    Called by each farm object master.cfg constructs; does nothing outside master.cfg and
    adds one configurator per configuration (again if master.cfg replaced
    ``c['configurators']``).
    """
    config_dict = config_being_loaded()
    if config_dict is None:
        return
    configurators = config_dict.setdefault(CONFIGURATORS, [])
    if not isinstance(configurators, (list, tuple)):
        return  # Buildbot reports a c['configurators'] that is not a list
    found = [c for c in configurators if isinstance(c, FarmConfigCheck)]
    if found:
        farm_check = found[0]
    else:
        farm_check = FarmConfigCheck()
        if isinstance(configurators, list):
            configurators.append(farm_check)  # in place: master.cfg may hold the list
        else:
            config_dict[CONFIGURATORS] = [*configurators, farm_check]
    for check in checks:
        farm_check.add(check)
