"""The remote side of the farm: what runs on build hosts and in containers, standard library only.

Its modules run on any POSIX host with Python >= 3.9 and nothing else installed. The master
builds them into one file, ``farm-remote.pyz`` (:func:`buildbot_farm.remote.pyz.build_archive`),
copies that onto a host or into a container, and runs ``python3 farm-remote.pyz COMMAND``
(:mod:`buildbot_farm.remote.main` lists the commands). The master imports the shared parts
directly: the wire protocol (:mod:`~.protocol`), path safety (:mod:`~.paths`), archive
checks (:mod:`~.archives`) and a container task's tar streams, paths and change checks
(:mod:`~.tar_stream`, :mod:`~.task_paths`, :mod:`~.task_inputs`, :mod:`~.task_changes`,
:mod:`~.task_outputs`), so that both sides follow one definition.
"""
