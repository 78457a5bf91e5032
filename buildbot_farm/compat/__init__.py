"""What the farm uses of its host libraries beyond their public API, one module per library.

* :mod:`.buildbot_api`: Buildbot (step arguments, ``_config_kwargs``, the builds a builder
  runs, a Build's step list, how master.cfg is run);
* :mod:`.twisted_web`: twisted.web (a request's raw chunked body, the request line a
  channel has read);
* :mod:`.docker_api`: docker-py (an archive copied with its owner, an attach stream
  without a read timeout).

Each use says why no public API serves. ``tests/test_compat.py`` holds a tripwire per use
that fails loudly, naming it, when an upgrade of the library changes what it relies on.
"""
