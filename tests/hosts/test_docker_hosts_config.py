"""util.DockerHost and util.DockerTLS: checked at checkconfig, secrets rendered at (re)config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from buildbot.plugins import util

from buildbot_farm.leases.config import BuildletPool, FarmCoordinator
from buildbot_farm.secret_values import SecretRenderer

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"


def pool(*hosts: Any, provider: str = "docker") -> BuildletPool:
    """A BuildletPool ``spread`` of image farm-test-base over ``hosts``, with the docker provider
    unless ``provider`` says otherwise."""
    return BuildletPool("spread", provider=provider, image="farm-test-base", hosts=hosts)


def test_hosts_are_checked_each_problem_naming_the_pool_and_host(tmp_path: Path) -> None:
    """BuildletPool.problems() accepts TLS tcp:// and unix:// hosts and names the pool and
    host in each problem: tcp:// without TLS, a URL with no scheme, max_count < 1, a missing
    certificate file, an empty key, repeated host names, hosts= on a non-docker provider."""
    cert = tmp_path / "cert.pem"
    cert.write_text(PEM)
    good = util.DockerTLS(ca=PEM, cert=str(cert), key=str(cert))
    assert pool(util.DockerHost("tcp://10.0.0.1:2376", tls=good)).problems() == []
    assert pool(util.DockerHost("unix:///var/run/docker.sock", max_count=2)).problems() == []
    assert pool(util.DockerHost("tcp://build1:2376")).problems() == [
        "BuildletPool spread: host build1: a tcp:// engine needs tls=util.DockerTLS(ca=...,"
        " cert=..., key=...) (dockerd --tlsverify)"
    ]
    assert pool(util.DockerHost("build1:2376", tls=good)).problems() == [
        "BuildletPool spread: DockerHost url 'build1:2376' must be a Docker URL such as"
        " tcp://build1:2376 or unix:///var/run/docker.sock"
    ]
    missing = util.DockerTLS(ca=PEM, cert=str(tmp_path / "nope.pem"), key="")
    assert pool(util.DockerHost("tcp://b:1", tls=missing, max_count=0)).problems() == [
        "BuildletPool spread: host b: max_count must be >= 1",
        f"BuildletPool spread: host b: DockerTLS cert file '{tmp_path / 'nope.pem'}' does not"
        " exist",
        "BuildletPool spread: host b: DockerTLS key must be a PEM file's path, PEM text or a"
        ' secret such as util.Secret("name")',
    ]
    twice = [util.DockerHost("tcp://b:1", tls=good), util.DockerHost("tcp://b:2", tls=good)]
    assert pool(*twice).problems() == [
        "BuildletPool spread: host names repeat (['b', 'b']); give each a name="
    ]
    assert pool(twice[0], provider="process").problems() == [
        "BuildletPool spread: hosts= applies to the docker provider"
    ]


@pytest_twisted.ensureDeferred
async def test_tls_secrets_render_to_pem_written_for_the_master_only(tmp_path: Path) -> None:
    """A DockerTLS key given as util.Secret renders to PEM written mode 0600 in a 0700
    directory; a secret that renders to neither PEM nor a file is a config error naming
    the pool, host and secret."""
    values = {"h1-key": f"  {PEM}\n", "h2-key": "not a pem"}

    async def render(value: Any) -> Any:
        return values[value.secret_name]

    tls = util.DockerTLS(ca=PEM, cert=PEM, key=util.Secret("h1-key"))
    wrong = util.DockerTLS(ca=PEM, cert=PEM, key=util.Secret("h2-key"))
    settings = FarmCoordinator(secret="s" * 16, pools=[pool(
        util.DockerHost("tcp://h1:2376", tls=tls), util.DockerHost("tcp://h2:2376", tls=wrong),
    )])
    secrets = SecretRenderer(render)
    rendered = await settings.with_secrets(secrets)
    assert secrets.errors == [
        'BuildletPool spread: host h2: DockerTLS key: util.Secret("h2-key") rendered to'
        " neither PEM text nor the path of an existing file"
    ]
    host = rendered.pools[0].hosts[0]
    assert host.tls is not None
    files = host.tls.files(tmp_path / "tls")
    assert Path(files.key).read_text() == PEM + "\n"
    assert Path(files.key).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
