"""Configuration checks: ``buildbot checkconfig`` catches the farm's cross-object mistakes.

Two kinds of mistakes are caught while Buildbot loads master.cfg, so ``buildbot checkconfig``,
the master's start and every reconfig refuse them with a config error that names the
object, the argument and what to do:

* **Unknown keywords.** Every farm class master.cfg constructs carries
  :func:`checked_keywords`: a misspelled keyword is named, with the closest accepted one
  (``difflib``) and the full list, instead of a TypeError about something else.
* **Cross-object mistakes**, which no single object can see from its own ``checkConfig``
  (that runs at construction, before the rest of master.cfg exists): a
  ``FarmLatentWorker`` without a coordinator or with a ``buildlet_type`` no pool has,
  ``token_builders`` or a ``BuildRecorder`` naming no builder, ``farm_menu()`` without the
  ``farm`` www plugin, artifact steps or an ``OnDemandScheduler`` without the capability
  they need in the ``FarmService``. Each check lives beside the class it is about and is
  handed to :func:`checked_keywords` (or :func:`watch_config`); it reads the configuration
  through :class:`Configuration`.

Why this hook. The cross-object checks need a point that sees the whole configuration and
that ``buildbot checkconfig`` runs. ``MasterConfig.loadFromDict`` gives plugins exactly one:
``c['configurators']``, Buildbot's extension point that receives the whole config dict, run
first, inside the loader that collects config errors (for checkconfig, the start and each
reconfig alike). The ``check_*`` methods and ``buildbot.scripts.checkconfig`` offer no hook
short of patching Buildbot. So that users need not add a configurator themselves, each farm
object master.cfg constructs adds one (:func:`watch_config`) to the ``BuildmasterConfig``
dict of the master.cfg being run, which it finds up the call stack; that is the one piece
that leans on how Buildbot runs master.cfg, kept in :mod:`buildbot_farm.compat.buildbot_api`
with a tripwire test.
Its limit: master.cfg must bind ``BuildmasterConfig`` before it constructs the farm objects
(``c = BuildmasterConfig = {}`` first, as Buildbot's sample does) and extend, not replace,
``c['configurators']`` after them; otherwise the mistakes surface when builds run, as before.
"""

from __future__ import annotations

from buildbot_farm.compat.buildbot_api import STEP_ARGUMENTS, check_config_arguments
from buildbot_farm.config_checks._configuration import Configuration, CrossCheck
from buildbot_farm.config_checks._hook import FarmConfigCheck, watch_config
from buildbot_farm.config_checks._keywords import checked_keywords, suggestion

__all__ = [
    "STEP_ARGUMENTS",
    "Configuration",
    "CrossCheck",
    "FarmConfigCheck",
    "check_config_arguments",
    "checked_keywords",
    "suggestion",
    "watch_config",
]
