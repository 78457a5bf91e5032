"""Two test hosts (network namespaces, each with its own TLS Docker engine) for the session."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.harness.docker_engine import DockerEngine
from tests.harness.docker_hosts import DockerTestHost, DockerTestHosts, HostsUnavailable
from tests.harness.images import ImageBuildError
from tests.harness.worker_image import ensure_worker_image


@pytest.fixture(scope="session")
def host_worker_image(docker_client: docker.DockerClient) -> str:
    """Tag of the worker test image (the base image with buildbot-worker), on every test host."""
    try:
        return ensure_worker_image(docker_client)
    except ImageBuildError as error:
        pytest.fail(f"these tests need the worker test image: {error}", pytrace=False)


@pytest.fixture(scope="session")
def docker_hosts(
    request: pytest.FixtureRequest, docker_engine: DockerEngine, base_image: str,
    host_worker_image: str,
) -> Iterator[list[DockerTestHost]]:
    """Two test hosts with ``base_image`` and ``host_worker_image`` loaded; torn down, and
    checked gone, after the session. A test that kills a host's engine or takes its link
    down brings it back before it ends.

    A missing capability (root, netns, dockerd) fails the tests: nothing is skipped. What the
    start cost is printed, since every module using this fixture pays it.
    """
    harness = DockerTestHosts()
    try:
        hosts = harness.start(2, [base_image, host_worker_image], Path(docker_engine.socket_path))
    except HostsUnavailable as error:
        harness.stop()
        pytest.fail(f"these tests need test hosts with Docker engines: {error}", pytrace=False)
    except BaseException:
        harness.stop()
        raise
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\ndocker test hosts: {len(hosts)} started in {harness.startup_seconds:.1f} s"
                " (namespaces, TLS engines, image loads)"
            )
    names = [host.name for host in hosts]
    yield hosts
    harness.stop()
    leftovers = [name for name in names if name in _run_text("ip", "netns", "list")]
    assert not leftovers, f"test host namespaces left behind: {leftovers}"


def _run_text(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout
