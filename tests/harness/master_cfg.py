"""The opening lines every test master.cfg shares: loopback ports from the environment."""

from __future__ import annotations

# Reads FARM_WEB_PORT and FARM_PB_PORT (which LocalFarm sets) and serves the farm plugin.
LOOPBACK_MASTER = """\
WEB = int(os.environ["FARM_WEB_PORT"])
c = BuildmasterConfig = {}
c["buildbotURL"] = f"http://127.0.0.1:{WEB}/"
c["buildbotNetUsageData"] = None
c["db"] = {"db_url": "sqlite:///state.sqlite"}
c["protocols"] = {"pb": {"port": f"tcp:{os.environ['FARM_PB_PORT']}:interface=127.0.0.1"}}
c["www"] = {"port": f"tcp:{WEB}:interface=127.0.0.1", "plugins": {"farm": {}}}
"""
