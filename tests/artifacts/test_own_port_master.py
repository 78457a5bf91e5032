"""ArtifactRepository(port=...) in a real master and worker: the build's token and URL point
at the repository's own port, curl streams an upload there, and refusals come early."""

from __future__ import annotations

import hashlib
import socket
import urllib.request
from collections.abc import Iterator

import pytest

from buildbot_farm.demo import LocalFarm
from tests.containers.conftest import BuildFarm
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port

pytestmark = pytest.mark.master
SUCCESS = 0

MASTER_CFG = f"""
import os
from buildbot.plugins import schedulers, steps, util, worker

{LOOPBACK_MASTER}
c["services"] = [util.FarmService(name="farm", artifacts=util.ArtifactRepository(
    port=int(os.environ["FARM_ARTIFACT_PORT"]), interface="127.0.0.1"))]
c["workers"] = [worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"])]
factory = util.BuildFactory([
    steps.ArtifactToken(),
    steps.ShellCommand(name="make", command="head -c 3000000 /dev/urandom > big.bin"),
    steps.ShellCommand(name="show url", command='echo "url=$FARM_ARTIFACT_URL"'),
    steps.ShellCommand(name="curl upload", command='curl -sSf -u'
                       ' "$FARM_ARTIFACT_USER:$FARM_ARTIFACT_TOKEN" -T big.bin'
                       ' "$FARM_ARTIFACT_URL/big.bin"'),
    steps.ShellCommand(name="keep digest", command="sha256sum big.bin > ../digest.txt"),
])
c["builders"] = [util.BuilderConfig(name="own", workernames=["local-worker"], factory=factory)]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["own"])]
"""


@pytest.fixture(scope="module")
def own_port_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BuildFarm, int]]:
    """A master whose repository also listens on a port of its own, and a worker."""
    base = tmp_path_factory.mktemp("own-port")
    config = base / "master.cfg"
    config.write_text(MASTER_CFG)
    port = free_port()
    farm = LocalFarm(config, base / "farm", env={
        "FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port()),
        "FARM_ARTIFACT_PORT": str(port),
    })
    farm.create()
    farm.start()
    try:
        yield BuildFarm(farm, ""), port
    finally:
        farm.stop()


def fetch(url: str) -> bytes:
    """GET ``url`` and return the body."""
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
    return body


def test_build_uploads_to_the_own_port(own_port_farm: tuple[BuildFarm, int]) -> None:
    """The build's FARM_ARTIFACT_URL is on the own port; the upload is served there and in
    Buildbot's web server alike."""
    build_farm, port = own_port_farm
    build = build_farm.build("own")
    assert build["results"] == SUCCESS, build_farm.log(build_farm.step(build, "curl upload"))
    shown = build_farm.log(build_farm.step(build, "show url"))
    own_url = f"http://127.0.0.1:{port}/bin/own/{build['number']}"
    assert f"url={own_url}" in shown
    digest = (build_farm.builddir / "own" / "digest.txt").read_text().split()[0]
    body = fetch(f"{own_url}/big.bin")
    assert hashlib.sha256(body).hexdigest() == digest
    mounted = f"{build_farm.farm.web_url}plugins/farm/artifacts/bin/own/{build['number']}/big.bin"
    assert fetch(mounted) == body


def test_own_port_refuses_a_bad_token_after_the_headers(
    own_port_farm: tuple[BuildFarm, int],
) -> None:
    """A PUT with a bad token and a 1 GiB Content-Length gets 401 without sending its body."""
    _, port = own_port_farm
    head = (b"PUT /bin/own/1/x.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer not-a-token\r\nContent-Length: 1073741824\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(head)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert b"nothing was written" in answer


def test_artifacts_directory_keeps_no_temporary_files(
    own_port_farm: tuple[BuildFarm, int],
) -> None:
    """After the uploads and the refusal, the storage's temporary directory is empty."""
    build_farm, _ = own_port_farm
    tmp_dir = build_farm.farm.master_dir / "artifacts" / ".farm-tmp"
    assert tmp_dir.is_dir(), tmp_dir
    assert list(tmp_dir.iterdir()) == []
