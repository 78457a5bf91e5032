"""The example master configuration that ships with the plugin.

``buildbot-farm example-config`` prints it or writes it to a file, and ``buildbot-farm demo``
runs it when no ``--config`` is given. It is a data file of this package, so it is there in
an installed wheel as in a checkout.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = [
    "DEMO_SECRETS",
    "EXAMPLE_CONFIG",
    "WORKER_PASSWORD_SECRET",
    "fill_secrets",
    "write_example_config",
]

EXAMPLE_CONFIG = Path(__file__).with_name("master.cfg")
# The secrets the example configuration reads with util.Secret(...) from its secrets directory.
WORKER_PASSWORD_SECRET = "worker-password"
DEMO_SECRETS = (
    "farm-coordinator-secret",
    "farm-records-api-key",
    "farm-records-admin-key",
    WORKER_PASSWORD_SECRET,
)


def write_example_config(path: Path, overwrite: bool = False) -> None:
    """Write the example master.cfg to ``path``.

    Raises ``FileExistsError`` when ``path`` exists and ``overwrite`` is false, so that a
    master's own configuration is never replaced by accident.
    """
    with path.open("w" if overwrite else "x") as out:
        out.write(EXAMPLE_CONFIG.read_text())


def fill_secrets(
    directory: Path, names: tuple[str, ...], given: dict[str, str] | None = None
) -> dict[str, str]:
    """Make ``directory`` a secrets directory for ``util.SecretInAFile`` holding ``names``.

    The directory gets mode 0700 and each file mode 0600 (SecretInAFile refuses files
    others can read). A value in ``given`` is (re)written; any other name keeps its file
    when it exists, else gets a random value. Returns every name's value.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    values = {}
    for name in names:
        path = directory / name
        value = (given or {}).get(name)
        if value is None and path.exists():
            values[name] = path.read_text(encoding="utf-8").strip()
            continue
        value = value if value is not None else secrets.token_hex(32)  # no leading "-"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(value + "\n")
        path.chmod(0o600)
        values[name] = value
    return values
