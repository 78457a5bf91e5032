"""Buildbot's REST API from outside the master, and ``buildbot-farm force`` on it.

``MasterAPI`` forces a build through a force scheduler's JSON-RPC ``force`` method and
polls its build request until the build is complete. It uses only the standard library
(blocking ``urllib``), so it suits scripts, the demo and tests alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

__all__ = ["RESULT_NAMES", "MasterAPI", "MasterAPIError", "add_force_command"]

RESULT_NAMES = ["SUCCESS", "WARNINGS", "FAILURE", "SKIPPED", "EXCEPTION", "RETRY", "CANCELLED"]


class MasterAPIError(Exception):
    """The master did not answer as expected; the message says what was asked and why."""


class MasterAPI:
    """The REST API of the master whose web UI is at ``web_url`` (ending in ``/``).

    ``build_timeout`` bounds the wait for a forced build; ``hint`` is added to connection
    errors (where to look when the master does not answer, e.g. its twistd.log);
    ``prefix`` starts each line printed about a build.
    """

    def __init__(
        self, web_url: str, build_timeout: float = 600.0, hint: str = "", prefix: str = ""
    ) -> None:
        self.web_url = web_url if web_url.endswith("/") else web_url + "/"
        self.build_timeout = build_timeout
        self.hint = hint
        self.prefix = prefix

    def force_build(
        self,
        builder: str,
        properties: dict[str, Any] | None = None,
        reason: str = "forced",
        scheduler: str = "force",
    ) -> dict[str, Any]:
        """Force ``builder`` through the force scheduler ``scheduler``; return the finished build.

        ``properties`` are force-scheduler parameters; the build dict is Buildbot's
        (``results``, ``state_string``, ``number``, ``builderid``, ``buildid`` ...).
        """
        answer = self.api(
            f"forceschedulers/{scheduler}",
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "force",
                "params": {"builderNames": [builder], "reason": reason, **(properties or {})},
            },
        )
        if "error" in answer:
            raise MasterAPIError(f"forcing {builder} with {scheduler!r}: {answer['error']}")
        _buildset, requests = answer["result"]
        request_id = next(iter(requests.values()))
        print(f"{self.prefix}forced {builder} (build request {request_id}); waiting for the build")
        deadline = time.monotonic() + self.build_timeout
        while time.monotonic() < deadline:
            builds = self.api(f"buildrequests/{request_id}/builds")["builds"]
            if builds and builds[0]["complete"]:
                return dict(builds[0])
            time.sleep(0.5)
        raise MasterAPIError(
            f"the build of {builder} did not finish within {self.build_timeout:g} s{self.hint}"
        )

    def report(self, build: dict[str, Any]) -> int:
        """Print a finished build's result and web address; return its result code."""
        result = int(build["results"])
        url = f"{self.web_url}#/builders/{build['builderid']}/builds/{build['number']}"
        name = RESULT_NAMES[result]
        print(f"{self.prefix}build {build['number']} {name}: {build['state_string']}")
        print(f"{self.prefix}{url}")
        return result

    def api(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET (or, with ``body``, POST) Buildbot's REST API at ``/api/v2/<path>``."""
        return self.get_json(f"{self.web_url}api/v2/{path}", body)

    def get_json(self, url: str, body: dict[str, Any] | None = None) -> Any:
        """GET (or POST ``body`` to) ``url`` and decode the JSON answer."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise MasterAPIError(f"{url} answered {e.code}: {detail}") from e
        except OSError as e:
            raise MasterAPIError(f"cannot reach {url}: {e}{self.hint}") from e


def add_force_command(commands: Any) -> None:
    """Add ``buildbot-farm force BUILDER`` to the command line's subcommands."""
    force = commands.add_parser(
        "force",
        help="force a build through a master's REST API, wait for it, print its result",
        description="Force BUILDER with a force scheduler of the master at --url, wait until"
        " the build is complete and print its result and address. Exits 0 only when the"
        " build succeeded.",
    )
    force.add_argument("builder", help="the builder to build")
    force.add_argument(
        "--url", default="http://127.0.0.1:8010/", help="the master's web UI (its buildbotURL)"
    )
    force.add_argument(
        "--scheduler", default="force", help="the name of a ForceScheduler that lists BUILDER"
    )
    force.add_argument("--reason", default="buildbot-farm force", help="the build's reason")
    force.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the build to finish"
    )
    force.set_defaults(handler=_force_command)


def _force_command(args: argparse.Namespace) -> int:
    master = MasterAPI(args.url, build_timeout=args.timeout)
    try:
        build = master.force_build(args.builder, reason=args.reason, scheduler=args.scheduler)
    except MasterAPIError as e:
        print(f"buildbot-farm force: {e}", file=sys.stderr)
        return 1
    return 0 if master.report(build) == 0 else 1
