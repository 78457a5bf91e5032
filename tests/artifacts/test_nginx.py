"""Real nginx (Debian's, with dav-ext) in front of the repository, configured as the docs say."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import task

from tests.artifacts.conftest import StartRepository, curl, run
from tests.harness.nginx import nginx_binary, start_nginx
from tests.harness.ports import free_port
from tests.harness.twisted_reactor import reactor

DOCS_CONFIG = Path(__file__).resolve().parents[2] / "docs" / "nginx" / "artifacts.conf"
DAV_EXT = Path("/usr/lib/nginx/modules/ngx_http_dav_ext_module.so")


class Nginx:
    """An nginx process serving ``root`` at ``/artifacts/`` on ``port``, asking ``auth_url``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, root: Path, auth_url: str) -> str:
        """Write the configuration from the docs and start nginx; return its /artifacts/ URL."""
        binary = nginx_binary("these tests need nginx with the dav-ext module")
        if not DAV_EXT.exists():
            pytest.fail("these tests need nginx's dav-ext module: install"
                        " libnginx-mod-http-dav-ext (tests/harness/install-system-packages.sh)",
                        pytrace=False)
        server = (
            DOCS_CONFIG.read_text()
            .replace("listen 80;", f"listen 127.0.0.1:{self.port};")
            .replace("/var/lib/buildbot/master/artifacts/", f"{root}/")
            .replace("http://127.0.0.1:8010/plugins/farm/artifacts/.farm-auth", auth_url)
        )
        self.process = start_nginx(binary, self.workdir, server, modules=(DAV_EXT,))
        return f"http://127.0.0.1:{self.port}/artifacts/"

    def stop(self) -> None:
        """Stop nginx."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    """An nginx to start; stopped after the test."""
    workdir = tmp_path / "nginx"
    workdir.mkdir()
    server = Nginx(workdir)
    yield server
    server.stop()


@pytest_twisted.ensureDeferred
async def test_nginx_serves_and_authorises_through_the_auth_endpoint(
    start_repository: StartRepository, nginx: Nginx, tmp_path: Path
) -> None:
    """Through nginx: token uploads land, bad tokens are 401, other scopes 403, reads are open."""
    public = f"http://127.0.0.1:{nginx.port}/artifacts/"
    repo = await start_repository(public_url=public)
    front = nginx.start(repo.root, repo.url + ".farm-auth")
    for _ in range(200):
        if (await run("curl", "-s", "-o", "/dev/null", front))[0] == 0:
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    token = await repo.token()
    data = tmp_path / "pkg.deb"
    data.write_bytes(b"deb" * 50_000)
    status, body = await curl("-u", f"build-7:{token}", "-T", str(data),
                              front + "dpkg/hello/3/pool/pkg.deb")
    assert status == 201, body
    assert (repo.root / "dpkg/hello/3/pool/pkg.deb").read_bytes() == data.read_bytes()
    status, body = await curl("-o", str(tmp_path / "down"), front + "dpkg/hello/3/pool/pkg.deb")
    assert status == 200
    assert (tmp_path / "down").read_bytes() == data.read_bytes()
    status, _ = await curl("-u", "build-7:wrong", "-T", str(data), front + "dpkg/hello/3/x")
    assert status == 401
    status, _ = await curl("-H", f"Authorization: Bearer {token}", "-T", str(data),
                           front + "dpkg/other/3/x")
    assert status == 403
    status, _ = await curl("-T", str(data), front + "dpkg/hello/3/y")
    assert status == 401
    assert sorted(p.name for p in (repo.root / "dpkg/hello/3").iterdir()) == ["pool"]
    assert (await curl(front + ".farm-tmp/"))[0] == 404
    listing = (await repo.request("GET", "dpkg/hello/3/pool/?format=json")).json()
    assert listing["entries"][0]["url"] == public + "dpkg/hello/3/pool/pkg.deb"
    assert listing["entries"][0]["sha256"]


@pytest_twisted.ensureDeferred
async def test_reads_through_nginx_never_ask_the_master(
    start_repository: StartRepository, nginx: Nginx, tmp_path: Path
) -> None:
    """With nothing answering auth_request, reads still work and writes are refused."""
    repo = await start_repository()
    (repo.root / "bin/hello/3").mkdir(parents=True)
    (repo.root / "bin/hello/3/app.txt").write_text("hello")
    front = nginx.start(repo.root, f"http://127.0.0.1:{free_port()}/.farm-auth")
    for _ in range(200):
        if (await run("curl", "-s", "-o", "/dev/null", front))[0] == 0:
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    status, body = await curl(front + "bin/hello/3/app.txt")
    assert status == 200
    assert body == "hello"
    assert (await curl("-I", front + "bin/hello/3/app.txt"))[0] == 200
    assert (await curl("-X", "PROPFIND", "-H", "Depth: 1", front + "bin/hello/3/"))[0] == 207
    token = await repo.token()
    for method in ("PUT", "DELETE", "MKCOL"):
        status, _ = await curl("-u", f"build-7:{token}", "-X", method, "--data-binary", "x",
                               front + "bin/hello/3/new/")
        assert status >= 500, method
    assert sorted(p.name for p in (repo.root / "bin/hello/3").iterdir()) == ["app.txt"]
