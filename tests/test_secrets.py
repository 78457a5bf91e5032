"""Every farm secret given as util.Secret from a SecretInAFile directory, in a real master."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from buildbot_farm.demo import LocalFarm, LocalFarmError
from buildbot_farm.example import fill_secrets
from buildbot_farm.leases import keys
from buildbot_farm.records.verify_cli import verify_file
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port

pytestmark = pytest.mark.master
BIN = Path(sys.executable).parent
RECORD = {"Name": "outside", "Version": "1.0", "TimeStamp": "2024-05-01T12:00:00Z",
          "Hostname": "ci-7", "Architecture": "amd64", "Language": "go",
          "binaries": [{"url": "https://dl.example/outside", "size": 1, "sha256": "0" * 64}]}

MASTER_CFG = f"""
import os
from buildbot.plugins import reporters, schedulers, secrets, steps, util, worker

{LOOPBACK_MASTER}
c["secretsProviders"] = [secrets.SecretInAFile(dirname=os.path.join(basedir, "secrets"))]
c["services"] = [
    util.FarmService(
        coordinator=util.FarmCoordinator(
            secret=util.Secret("farm-coordinator-secret"),
            pools=[util.BuildletPool("local", max_count=2)]),
        records=util.BuildRecords(
            api_keys={{"ci": util.Secret("farm-records-api-key")}},
            admin_keys={{"ops": util.Interpolate("%(secret:farm-records-admin-key)s")}},
            signing_key=util.Secret("records-signing-key")),
        on_demand=util.OnDemandBuilds(signing_key=util.Secret("ondemand-signing-key")),
    ),
    reporters.BuildRecorder(builders=["leased"], name="leased", properties=["buildername"]),
]
c["workers"] = [
    worker.Worker("local-worker", util.Secret("worker-password")),
    worker.FarmLatentWorker("buildlet-worker", buildlet_type="local",
                            password=util.Secret("latent-worker-password")),
    # Leases as another user through the coordinator's URL, with a key from a secret.
    worker.FarmLatentWorker("remote-worker", buildlet_type="local", user="user-remote",
                            coordinator_url=f"http://127.0.0.1:{{WEB}}/plugins/farm/coordinator",
                            key=util.Secret("remote-lease-key")),
]
factory = util.BuildFactory([steps.ShellCommand(command=["echo", "hello"], name="hello")])
c["builders"] = [
    util.BuilderConfig(name="leased", workernames=["buildlet-worker"], factory=factory),
    util.BuilderConfig(name="local", workernames=["local-worker"], factory=factory),
    util.BuilderConfig(name="remote", workernames=["remote-worker"], factory=factory),
]
c["schedulers"] = [
    schedulers.ForceScheduler(name="force", builderNames=["leased", "local", "remote"])]
"""


def private_pem() -> str:
    """A new Ed25519 private key as PEM text."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()


def public_pem(pem: str) -> bytes:
    """The PEM public key of the private key ``pem``."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def new_farm(base: Path, config: str, **env: str) -> LocalFarm:
    """A LocalFarm of ``config`` under ``base`` on free ports (not yet created)."""
    path = base / "master.cfg"
    path.write_text(config)
    return LocalFarm(path, base / "farm", build_timeout=120, env={
        "FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port()), **env})


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFarm]:
    """The module's running master of MASTER_CFG, with the coordinator secret, the remote user's
    key and the signing keys written to its secrets directory before it is created."""
    local = new_farm(tmp_path_factory.mktemp("secrets"), MASTER_CFG)
    coordinator_secret = secrets.token_hex(32)
    fill_secrets(local.secrets_dir, (
        "farm-coordinator-secret", "remote-lease-key", "records-signing-key",
        "ondemand-signing-key", "latent-worker-password", "other-records-api-key",
    ), {"farm-coordinator-secret": coordinator_secret,
        "remote-lease-key": keys.user_key(coordinator_secret.encode(), "user-remote"),
        "records-signing-key": private_pem(), "ondemand-signing-key": private_pem()})
    local.create()
    local.start()
    yield local
    local.stop()


def secret(farm: LocalFarm, name: str) -> str:
    """The value of secret ``name`` in the farm's secrets directory."""
    return (farm.secrets_dir / name).read_text().strip()


def call(farm: LocalFarm, method: str, path: str, body: Any = None,
         key: str | None = None) -> tuple[int, Any]:
    """One request to the records API; return (status, decoded JSON or None)."""
    request = urllib.request.Request(
        f"{farm.web_url}plugins/farm/api/{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw, status = response.read(), response.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    return status, json.loads(raw) if raw else None


def cli(farm: LocalFarm, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``buildbot-farm ARGS`` with ``env`` added to a clean environment."""
    environment = {"PATH": os.environ["PATH"], "HOME": str(farm.basedir), **env}
    return subprocess.run([str(BIN / "buildbot-farm"), *args], env=environment,
                          capture_output=True, text=True, timeout=120, check=False)


def test_a_key_derived_from_the_secret_leases_a_buildlet(farm: LocalFarm) -> None:
    """`buildbot-farm key` on the secret file gives a key that leases; another key does not."""
    made = cli(farm, "key", "user-tester", "--secret-file",
               str(farm.secrets_dir / "farm-coordinator-secret"))
    assert made.returncode == 0, made.stderr
    settings = {"FARM_COORDINATOR_URL": f"{farm.web_url}plugins/farm/coordinator",
                "FARM_USER": "user-tester"}
    created = cli(farm, "lease", "create", "local", FARM_KEY=made.stdout.strip(), **settings)
    assert created.returncode == 0, created.stderr
    destroyed = cli(farm, "lease", "destroy", created.stdout.strip(),
                    FARM_KEY=made.stdout.strip(), **settings)
    assert destroyed.returncode == 0, destroyed.stderr
    refused = cli(farm, "lease", "create", "local", FARM_KEY="0" * 64, **settings)
    assert refused.returncode != 0


def test_workers_build_with_their_secret_passwords_and_keys(farm: LocalFarm) -> None:
    """Builds succeed on latent workers (password, key or the coordinator's secret from
    secrets) and on the local worker (password from a secret)."""
    for builder in ("leased", "remote", "local"):
        assert farm.force_build(builder)["results"] == 0, builder


def test_records_keys_and_signing_key_from_secrets_work(farm: LocalFarm, tmp_path: Path) -> None:
    """The API key posts, a wrong one is refused, the admin key deletes, provenance verifies."""
    api_key = secret(farm, "farm-records-api-key")
    admin_key = secret(farm, "farm-records-admin-key")
    assert call(farm, "POST", "builds", RECORD, key="wrong-key-of-enough-length")[0] == 401
    status, created = call(farm, "POST", "builds", RECORD, key=api_key)
    assert status == 201, created
    status, envelope = call(farm, "GET", "builds/outside/1.0/provenance")
    assert status == 200
    public = farm.master_dir / "records-signing-key.pub"
    assert public.read_bytes() == public_pem(secret(farm, "records-signing-key"))
    (tmp_path / "provenance.json").write_text(json.dumps(envelope))
    assert verify_file(tmp_path / "provenance.json", public) == 0
    assert call(farm, "DELETE", "builds/outside/1.0?reason=x", key=api_key)[0] == 403
    status, tombstone = call(farm, "DELETE", "builds/outside/1.0?reason=test", key=admin_key)
    assert status == 200, tombstone
    assert tombstone["deletedBy"] == "ops"
    with urllib.request.urlopen(
        f"{farm.web_url}plugins/farm/api/download/public-key.pem", timeout=30
    ) as response:
        assert response.read() == public_pem(secret(farm, "ondemand-signing-key"))


def test_no_secret_shows_in_the_log_properties_or_farm_database(farm: LocalFarm) -> None:
    """No secret value is in twistd.log, a build's properties or the farm database's bytes."""
    farm.force_build("leased")
    values = {name: secret(farm, name) for name in os.listdir(farm.secrets_dir)}
    for name in ("records-signing-key", "ondemand-signing-key"):
        pem = values.pop(name)
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        values[name + " (base64)"] = "".join(pem.splitlines()[1:-1])
        values[name + " (raw hex)"] = raw.hex()
        values[name + " (raw base64)"] = base64.b64encode(raw).decode()
    properties = [
        farm.api(f"builds/{build['buildid']}/properties")
        for build in farm.api("builds")["builds"]
    ]
    assert properties
    places = {
        "twistd.log": farm.master_log.read_bytes(),
        "build properties": json.dumps(properties).encode(),
    }
    for path in farm.master_dir.glob("farm.sqlite*"):
        places[path.name] = path.read_bytes()
    assert "farm.sqlite" in places
    for name, value in values.items():
        for where, data in places.items():
            assert value.encode() not in data, f"the secret {name} is in {where}"


def test_a_reconfig_renders_the_secrets_again(farm: LocalFarm) -> None:
    """After a reconfig naming another secret for the API key, that key works, the old not."""
    old, new = secret(farm, "farm-records-api-key"), secret(farm, "other-records-api-key")
    record = {**RECORD, "Version": "2.0"}
    text = farm.config.read_text().replace('"farm-records-api-key"', '"other-records-api-key"')
    (farm.master_dir / "master.cfg").write_text(text)
    done = subprocess.run([str(BIN / "buildbot"), "reconfig", str(farm.master_dir)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        assert call(farm, "POST", "builds", record, key=old)[0] == 401
        assert call(farm, "POST", "builds", record, key=new)[0] == 201
    finally:
        (farm.master_dir / "master.cfg").write_text(farm.config.read_text())
        subprocess.run([str(BIN / "buildbot"), "reconfig", str(farm.master_dir)],
                       capture_output=True, text=True, timeout=120, check=False)


def test_checkconfig_still_refuses_a_short_literal_secret(tmp_path: Path) -> None:
    """A literal coordinator secret or API key under 16 characters fails checkconfig, named."""
    config = MASTER_CFG.replace('util.Secret("farm-coordinator-secret")', '"too-short"').replace(
        'util.Secret("farm-records-api-key")', '"short"')
    (tmp_path / "master.cfg").write_text(config)
    (tmp_path / "secrets").mkdir(mode=0o700)
    done = subprocess.run(
        [str(BIN / "buildbot"), "checkconfig", "master.cfg"], cwd=tmp_path,
        env={**os.environ, "FARM_WEB_PORT": "1", "FARM_PB_PORT": "2"},
        capture_output=True, text=True, check=False)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "FarmService: FarmCoordinator: secret must be a string of at least 16 characters" \
        in output
    assert "FarmService: BuildRecords: api_keys['ci'] must be a string of at least 16" in output


def test_a_secret_that_cannot_be_rendered_stops_the_start_naming_it(tmp_path: Path) -> None:
    """A missing secret file, or one too short, is a config error naming argument and secret."""
    local = new_farm(tmp_path, MASTER_CFG)
    fill_secrets(local.secrets_dir, ("records-signing-key", "latent-worker-password"),
                 {"records-signing-key": private_pem()})
    local.create()
    (local.secrets_dir / "farm-coordinator-secret").unlink()
    (local.secrets_dir / "farm-records-admin-key").write_text("q1w2e3\n")
    with pytest.raises(LocalFarmError):
        local.start()
    local.stop()
    log = local.master_log.read_text()
    assert ('FarmService: FarmCoordinator: secret: util.Secret("farm-coordinator-secret")'
            " cannot be rendered: secret key farm-coordinator-secret is not found") in log
    assert ("FarmService: BuildRecords: admin_keys['ops']: util.Interpolate(...) of secret"
            ' "farm-records-admin-key" rendered to fewer than 16 characters') in log
    assert ('FarmService: OnDemandBuilds: signing_key: util.Secret("ondemand-signing-key")'
            " cannot be rendered") in log
    assert "q1w2e3" not in log
