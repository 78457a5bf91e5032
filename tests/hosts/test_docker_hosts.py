"""The test hosts are what they claim: own addresses, TLS-only engines, the image, no leftovers."""

from __future__ import annotations

import docker
import pytest
import requests
from docker.errors import DockerException

from tests.harness.docker_hosts import DockerTestHost

_ADDRESSES = (
    "import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print('bound')"
)


def test_each_host_has_its_engine_its_address_and_the_image(
    docker_hosts: list[DockerTestHost], base_image: str
) -> None:
    """Each test host has an address of its own, its own engine (state under the host's
    directory) holding the base image, and its host-network containers bind that address."""
    assert len({host.address for host in docker_hosts}) == len(docker_hosts)
    for host in docker_hosts:
        client = host.client()
        try:
            assert client.images.get(base_image)
            # A host-network container sees the host's own address, not this machine's.
            output = client.containers.run(
                base_image, ["python3", "-c", _ADDRESSES, host.address],
                network_mode="host", remove=True,
            )
            assert output.strip() == b"bound"
            assert client.info()["DockerRootDir"].startswith(str(host.state_dir))
        finally:
            client.close()


def test_an_engine_refuses_clients_without_the_harness_certificate(
    docker_hosts: list[DockerTestHost],
) -> None:
    """An engine refuses a client with no TLS and a client with the CA but no client
    certificate, and still answers the harness's own client afterwards."""
    host = docker_hosts[0]
    with pytest.raises((DockerException, requests.RequestException)):
        docker.DockerClient(base_url=host.url, timeout=5).ping()
    anonymous = docker.tls.TLSConfig(ca_cert=host.tls.ca, verify=True)
    client = docker.DockerClient(base_url=host.url, tls=anonymous, version="1.41", timeout=5)
    client.api.trust_env = False
    with pytest.raises((DockerException, requests.RequestException)):
        client.ping()
    assert host.answers()
