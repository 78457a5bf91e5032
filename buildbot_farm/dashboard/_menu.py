"""The "Farm" menu entry: a WSGI app for Buildbot's ``wsgi_dashboards`` plugin.

The web UI fetches ``/plugins/wsgi_dashboards/farm/index.html`` and inserts it into the page
under the menu entry; inserted markup runs no scripts, so the app answers with an iframe
showing the farm's own pages at ``/plugins/farm/ui/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from buildbot_farm.config_checks import Configuration, watch_config
from buildbot_farm.names import FARM_SERVICE, WWW_PLUGIN

StartResponse = Callable[..., Any]

FRAME = (
    b'<iframe id="farm-dashboard" title="Farm" src="plugins/farm/ui/buildlets"'
    b' style="width:100%;height:85vh;border:0"></iframe>\n'
)


def farm_dashboard(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI app of the menu entry; any path answers with the dashboard's iframe."""
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(FRAME)))])
    return [FRAME]


def www_problems(configuration: Configuration) -> Iterator[str]:
    """A farm_menu() without the farm www plugin, or the plugin without its FarmService."""
    plugins = configuration.www_plugins
    dashboards = plugins.get("wsgi_dashboards")
    menus = [d for d in dashboards if isinstance(d, Mapping) and d.get("app") is farm_dashboard
             ] if isinstance(dashboards, (list, tuple)) else []
    if menus and WWW_PLUGIN not in plugins:
        yield ("farm_menu() in c['www']['plugins']['wsgi_dashboards'] shows the pages the farm"
               " www plugin serves, but that plugin is not enabled: add"
               " c['www']['plugins']['farm'] = {} (its menu would show \"No Such Resource\")")
    if WWW_PLUGIN in plugins:
        plugin = plugins[WWW_PLUGIN]
        service = str(plugin.get("service", FARM_SERVICE)) if isinstance(
            plugin, Mapping) else FARM_SERVICE
        if service not in configuration.farms:
            yield (f"c['www']['plugins']['farm'] serves the FarmService {service!r}, but"
                   f" c['services'] has no util.FarmService named {service!r}: add"
                   f" util.FarmService(name={service!r}) to c['services']")


def farm_menu(caption: str = "Farm", order: int = 5, icon: str = "industry") -> dict[str, Any]:
    """The ``wsgi_dashboards`` entry for master.cfg.

    ``c['www']['plugins']['wsgi_dashboards'] = [farm_menu()]`` adds the "Farm" menu entry;
    ``buildbot checkconfig`` then also checks that the ``farm`` www plugin is enabled.
    ``icon`` is a Font Awesome name; buildbot-wsgi-dashboards 4.3 finds none (its lookup
    iterates the candidates' indices, not the names), logs "Could not find icon" to the
    browser console and shows its default icon.
    """
    watch_config(www_problems)
    return {"name": "farm", "caption": caption, "app": farm_dashboard, "order": order,
            "icon": icon}
