"""The worker test image: buildbot_worker imports and sets up a worker, with no network."""

from __future__ import annotations

import buildbot_worker
import docker
import pytest

from tests.harness.worker_image import ensure_worker_image

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def worker_image(docker_client: docker.DockerClient) -> str:
    """Tag of the worker test image, built on the base image on first use."""
    return ensure_worker_image(docker_client)


def run(client: docker.DockerClient, image: str, command: list[str]) -> str:
    """Run ``command`` in a networkless container of ``image``; its output (exit 0 asserted)."""
    container = client.containers.create(image, command=command, network_mode="none")
    try:
        container.start()
        status = container.wait(timeout=60)["StatusCode"]
        output = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert status == 0, f"{command} exited {status}:\n{output}"
    return output


def test_buildbot_worker_imports_without_network(
    docker_client: docker.DockerClient, worker_image: str
) -> None:
    """``python3 -c 'import buildbot_worker.bot'`` succeeds in the image with network none."""
    output = run(
        docker_client,
        worker_image,
        ["python3", "-c", "import buildbot_worker.bot; print(buildbot_worker.version)"],
    )
    assert output.strip() == buildbot_worker.version, "not this venv's buildbot_worker"


def test_create_worker_makes_a_worker_directory(
    docker_client: docker.DockerClient, worker_image: str
) -> None:
    """``buildbot-worker create-worker`` writes a buildbot.tac naming the master and worker."""
    output = run(
        docker_client,
        worker_image,
        [
            "sh",
            "-c",
            "buildbot-worker create-worker --umask=0o22 /tmp/w 127.0.0.1:9989 probe secret"
            " >/dev/null && cat /tmp/w/buildbot.tac",
        ],
    )
    assert "buildmaster_host = '127.0.0.1'" in output
    assert "workername = 'probe'" in output
