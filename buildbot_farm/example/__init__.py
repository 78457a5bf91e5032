"""The example master configuration that ships with the plugin.

``buildbot-farm example-config`` prints it or writes it to a file, and ``buildbot-farm demo``
runs it when no ``--config`` is given. It is a data file of this package, so it is there in
an installed wheel as in a checkout.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EXAMPLE_CONFIG", "write_example_config"]

EXAMPLE_CONFIG = Path(__file__).with_name("master.cfg")


def write_example_config(path: Path, overwrite: bool = False) -> None:
    """Write the example master.cfg to ``path``.

    Raises ``FileExistsError`` when ``path`` exists and ``overwrite`` is false, so that a
    master's own configuration is never replaced by accident.
    """
    with path.open("w" if overwrite else "x") as out:
        out.write(EXAMPLE_CONFIG.read_text())
