"""Settings of ``buildbot-farm lease``: the coordinator's URL, the user and the user's key.

The environment (``FARM_COORDINATOR_URL``, ``FARM_USER``, ``FARM_KEY``) wins over the file given
with ``--config``, else ``$XDG_CONFIG_HOME/buildbot-farm/lease.ini`` (``~/.config/...``)::

    [coordinator]
    url = http://farm.example.org:8010/plugins/farm/coordinator
    user = user-alice
    key = what `buildbot-farm key user-alice --secret-file FILE` printed for the admin

The url is the master's ``buildbotURL`` followed by ``plugins/farm/coordinator``, or the root of
a standalone ``buildbot-farm coordinator`` (``http://HOST:8011`` by default).
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from buildbot_farm.leases import keys

SECTION = "coordinator"
ENVIRONMENT = {"url": "FARM_COORDINATOR_URL", "user": "FARM_USER", "key": "FARM_KEY"}
SETTINGS_HELP = f"""settings: FARM_COORDINATOR_URL, FARM_USER and FARM_KEY in the environment, else
--config FILE or $XDG_CONFIG_HOME/buildbot-farm/lease.ini (~/.config/...):

    [{SECTION}]
    url = http://farm.example.org:8010/plugins/farm/coordinator
    user = user-alice
    key = (from the farm's admin: buildbot-farm key user-alice --secret-file FILE)

url: the master's buildbotURL + plugins/farm/coordinator, or the root of a standalone
`buildbot-farm coordinator` (http://HOST:8011 by default)"""


class LeaseSettingsError(Exception):
    """A setting is missing or wrong; the message says where to put it right."""


@dataclass(frozen=True)
class CoordinatorAccess:
    """Where the coordinator is, and who we are to it."""

    url: str
    user: str
    key: str


def default_config_path(environ: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/buildbot-farm/lease.ini``, with ``~/.config`` as the default base."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "buildbot-farm" / "lease.ini"


def load_settings(config: str | None, environ: Mapping[str, str]) -> CoordinatorAccess:
    """Read the settings, the environment winning over the file; LeaseSettingsError if one lacks.

    ``config`` is an explicit file, which must exist; the default file may be absent.
    """
    path = Path(config) if config else default_config_path(environ)
    values = _read_config(path, required=bool(config))
    for name, variable in ENVIRONMENT.items():
        if environ.get(variable):
            values[name] = environ[variable]
    missing = [name for name in ENVIRONMENT if not values.get(name)]
    if missing:
        variables = ", ".join(ENVIRONMENT[name] for name in missing)
        lines = ", ".join(f"'{name} = ...'" for name in missing)
        raise LeaseSettingsError(
            f"no coordinator {'/'.join(missing)} configured: set {variables} in the environment "
            f"or put {lines} under [{SECTION}] in {path}"
        )
    if not values["url"].startswith(("http://", "https://")):
        raise LeaseSettingsError(
            f"coordinator url {values['url']!r} must start with http:// or https://"
        )
    try:
        keys.check_user(values["user"])
    except ValueError as e:
        raise LeaseSettingsError(str(e)) from None
    return CoordinatorAccess(values["url"], values["user"], values["key"])


def _read_config(path: Path, required: bool) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as source:
            parser.read_file(source)
    except FileNotFoundError:
        if required:
            raise LeaseSettingsError(f"config file {path} does not exist") from None
        return {}
    except (OSError, UnicodeDecodeError, configparser.Error) as e:
        reason = " ".join(str(e).split())
        raise LeaseSettingsError(f"cannot read config file {path}: {reason}") from None
    if not parser.has_section(SECTION):
        raise LeaseSettingsError(
            f"config file {path} has no [{SECTION}] section: put url, user and key under it"
        )
    values = dict(parser[SECTION])
    unknown = sorted(set(values) - set(ENVIRONMENT))
    if unknown:
        raise LeaseSettingsError(
            f"config file {path}: unknown setting {unknown[0]!r} in [{SECTION}]; "
            "the settings are url, user and key"
        )
    return values
