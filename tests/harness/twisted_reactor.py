"""The process's global Twisted reactor, as the tests and the benchmarks use it.

mypy takes ``twisted.internet.reactor`` for the module it is declared in, not for the
reactor installed there, and rejects calls such as ``reactor.listenTCP(0, site)``. The
tests and the benchmarks import it from here instead, typed ``Any`` as the library's own
code takes its reactor parameter. Importing this module installs the default reactor, as
importing ``twisted.internet.reactor`` does.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as _installed

reactor: Any = _installed
