"""The farm's HTTP kit against plain twisted.web and klein, serving the same constant JSON.

Three servers, each in a process of its own on loopback, answer ``GET /things/{name}`` with
the same JSON document: a plain ``twisted.web`` resource (synchronous ``render_GET``: the
floor), the farm's :class:`~buildbot_farm.web.Routes` (an async handler through
``respond``: what every farm API now pays), and a klein app (an async route, the
alternative STYLE.md names). Each router has four routes, as a small farm API does. wrk
(Debian's package) is the load generator; klein must be installed (``pip install klein``;
it is not a dependency of the plugin).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_records import _start, _wrk

PLAIN = """
import sys
from twisted.internet import reactor
from twisted.web import resource, server
BODY = open(sys.argv[1], "rb").read()
class Constant(resource.Resource):
    isLeaf = True
    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/json")
        return BODY
port = reactor.listenTCP(0, server.Site(Constant()), interface="127.0.0.1", backlog=1024)
open(sys.argv[2], "w").write(str(port.getHost().port))
reactor.run()
"""
KIT = """
import sys
from twisted.internet import reactor
from twisted.web import server
from buildbot_farm.web import Routes
BODY = open(sys.argv[1], "rb").read()
class Things:
    routes = Routes("bench")
    @routes.route("GET", "things")
    async def listing(self, request): return b"[]"
    @routes.route("POST", "things")
    async def add(self, request): return b"{}"
    @routes.route("DELETE", "things/{name}")
    async def remove(self, request, name): return b"{}"
    @routes.route("GET", "things/{name}")
    async def thing(self, request, name):
        request.setHeader(b"content-type", b"application/json")
        return BODY
site = server.Site(Things.routes.resource(Things()))
port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=1024)
open(sys.argv[2], "w").write(str(port.getHost().port))
reactor.run()
"""
KLEIN = """
import sys
from klein import Klein
from twisted.internet import reactor
from twisted.web import server
BODY = open(sys.argv[1], "rb").read()
class Things:
    app = Klein()
    @app.route("/things", methods=["GET"])
    async def listing(self, request): return b"[]"
    @app.route("/things", methods=["POST"])
    async def add(self, request): return b"{}"
    @app.route("/things/<name>", methods=["DELETE"])
    async def remove(self, request, name): return b"{}"
    @app.route("/things/<name>", methods=["GET"])
    async def thing(self, request, name):
        request.setHeader(b"content-type", b"application/json")
        return BODY
site = server.Site(Things().app.resource())
port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=1024)
open(sys.argv[2], "w").write(str(port.getHost().port))
reactor.run()
"""
SERVERS = {"plain twisted.web resource": PLAIN, "farm kit (Routes)": KIT, "klein": KLEIN}
ROUNDS = 3


def main() -> None:
    """Start the three servers, measure them in turn ``ROUNDS`` times, print the table.

    Taking turns (A B C A B C ...) keeps the ratios meaningful on a shared, noisy machine;
    the table gives the median and the range of each figure and of each ratio.
    """
    if shutil.which("wrk") is None:
        raise SystemExit("bench_web_kit needs wrk: apt-get install wrk")
    try:
        import klein  # noqa: F401
    except ImportError:
        raise SystemExit("bench_web_kit compares with klein: pip install klein") from None
    workdir = Path(tempfile.mkdtemp(prefix="farm-bench-web-kit-"))
    processes = []
    try:
        body = workdir / "body.json"
        body.write_text(json.dumps({"name": "abc", "items": list(range(50))}))
        urls = {}
        for number, (name, program) in enumerate(SERVERS.items()):
            port_file = workdir / f"port-{number}"
            process, port = _start([sys.executable, "-c", program, str(body), str(port_file)],
                                   port_file)
            processes.append(process)
            urls[name] = f"http://127.0.0.1:{port}/things/abc"
            _wrk(urls[name], None)  # warm up
        rounds = [{name: _wrk(url, None) for name, url in urls.items()} for _ in range(ROUNDS)]
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    plain = "plain twisted.web resource"
    print(f"GET /things/{{name}}, constant JSON, wrk -c32 10s, {ROUNDS} rounds taken in turn")
    print(f"{'server':<28}{'req/s median (range)':>26}{'x plain median (range)':>26}")
    for name in SERVERS:
        rps = sorted(r[name][0] for r in rounds)
        ratios = sorted(r[name][0] / r[plain][0] for r in rounds)
        print(f"{name:<28}{f'{rps[1]:.0f} ({rps[0]:.0f}-{rps[-1]:.0f})':>26}"
              f"{f'{ratios[1]:.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})':>26}")
    kit = sorted(r["farm kit (Routes)"][0] / r["klein"][0] for r in rounds)
    print(f"farm kit / klein: {kit[1]:.2f} ({kit[0]:.2f}-{kit[-1]:.2f})")
    print(json.dumps(rounds))
