"""Leased remote builders: the coordinator, its providers, ``worker.FarmLatentWorker``.

The submodules are imported by name (:mod:`.config`, :mod:`.coordinator`, :mod:`.worker`,
:mod:`.providers` ...); this package root only marks ``buildbot_farm.leases`` as a package,
so that the wheel carries it.
"""
