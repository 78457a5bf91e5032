"""`buildbot checkconfig` (the real command) refuses the farm's cross-object mistakes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BUILDBOT = Path(sys.executable).parent / "buildbot"

# A correct configuration with every farm object the checks look at; each test changes one
# thing of it into a mistake.
GOOD = f"""\
import os
from buildbot.plugins import reporters, schedulers, steps, util, worker
from buildbot_farm.dashboard import farm_menu

{LOOPBACK_MASTER}
c["www"]["plugins"]["wsgi_dashboards"] = [farm_menu()]
c["services"] = [
    util.FarmService(
        coordinator=util.FarmCoordinator(
            secret="checkconfig-test-secret", pools=[util.BuildletPool("local")]),
        artifacts=util.ArtifactRepository(token_builders=["hello-*"]),
        on_demand=util.OnDemandBuilds(),
    ),
    reporters.BuildRecorder(builders=["hello-farm"]),
]
c["workers"] = [
    worker.Worker("local-worker", "password"),
    worker.FarmLatentWorker("leased", buildlet_type="local"),
]
factory = util.BuildFactory([
    steps.ShellCommand(name="build", command=["true"]),
    steps.ArtifactUpload(name="publish", workersrc="out/tool"),
])
c["builders"] = [
    util.BuilderConfig(name="hello-farm", workernames=["local-worker"], factory=factory),
    util.BuilderConfig(name="hello-buildlet", workernames=["leased"], factory=factory),
]
c["schedulers"] = [
    schedulers.ForceScheduler(name="force", builderNames=["hello-farm", "hello-buildlet"]),
    schedulers.OnDemandScheduler(name="tool", builder="hello-farm", artifact="bin/*/*/tool"),
]
"""


def checkconfig(basedir: Path, text: str) -> subprocess.CompletedProcess[str]:
    """Run `buildbot checkconfig` on ``text`` as the master.cfg of the basedir ``basedir``."""
    basedir.mkdir(exist_ok=True)
    (basedir / "master.cfg").write_text(text)
    env = {**os.environ, "FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port())}
    return subprocess.run([BUILDBOT, "checkconfig", "master.cfg"], cwd=basedir, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def refused(tmp_path: Path, old: str, new: str) -> str:
    """The errors checkconfig prints for GOOD with ``old`` replaced by ``new`` (it must fail)."""
    text = GOOD.replace(old, new)
    assert text != GOOD, f"{old!r} is not in the test configuration"
    done = checkconfig(tmp_path, text)
    assert done.returncode != 0, done.stdout
    assert "Config file is good!" not in done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr


def test_the_correct_configuration_passes(tmp_path: Path) -> None:
    """The configuration every other test breaks in one place is itself good."""
    done = checkconfig(tmp_path, GOOD)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Config file is good!" in done.stdout


def test_a_latent_worker_without_a_coordinator_is_refused(tmp_path: Path) -> None:
    """A FarmLatentWorker whose FarmService runs no coordinator is named, with what to add."""
    errors = refused(tmp_path, """coordinator=util.FarmCoordinator(
            secret="checkconfig-test-secret", pools=[util.BuildletPool("local")]),""", "")
    assert ("FarmLatentWorker 'leased': the FarmService 'farm' in c['services'] runs no"
            " coordinator") in errors
    assert "coordinator=util.FarmCoordinator(" in errors


def test_a_latent_worker_with_no_farm_service_is_refused(tmp_path: Path) -> None:
    """A FarmLatentWorker whose farm= names no FarmService says so and what to add."""
    errors = refused(tmp_path, 'buildlet_type="local")', 'buildlet_type="local", farm="other")')
    assert ("FarmLatentWorker 'leased': leases from the coordinator of the FarmService 'other'"
            in errors)
    assert "c['services'] has no util.FarmService named 'other'" in errors


def test_a_buildlet_type_no_pool_has_is_refused(tmp_path: Path) -> None:
    """A buildlet_type that is not a pool names the pools there are and the closest one."""
    errors = refused(tmp_path, 'buildlet_type="local"', 'buildlet_type="lcoal"')
    assert "FarmLatentWorker 'leased': buildlet_type 'lcoal' is not a pool" in errors
    assert "its pools are local (did you mean 'local'?)" in errors


def test_token_builders_matching_no_builder_are_refused(tmp_path: Path) -> None:
    """A token_builders pattern that matches no builder fails checkconfig, not only the start."""
    errors = refused(tmp_path, 'token_builders=["hello-*"]', 'token_builders=["helo-*"]')
    assert "no builder matches the token_builders entries 'helo-*'" in errors
    assert "the builders are hello-buildlet, hello-farm" in errors


def test_a_recorder_naming_no_builder_is_refused(tmp_path: Path) -> None:
    """A BuildRecorder's builders entry that is not a builder is named with the closest one."""
    errors = refused(tmp_path, 'BuildRecorder(builders=["hello-farm"])',
                     'BuildRecorder(builders=["hello-fram"])')
    assert "builders names 'hello-fram', which is not a builder in c['builders']" in errors
    assert "(did you mean 'hello-farm'?)" in errors


def test_farm_menu_without_the_farm_www_plugin_is_refused(tmp_path: Path) -> None:
    """farm_menu() with no c['www']['plugins']['farm'] says to enable the plugin."""
    errors = refused(tmp_path, 'c["www"]["plugins"]["wsgi_dashboards"] = [farm_menu()]',
                     'c["www"]["plugins"] = {"wsgi_dashboards": [farm_menu()]}')
    assert "farm_menu() in c['www']['plugins']['wsgi_dashboards']" in errors
    assert "add c['www']['plugins']['farm'] = {}" in errors


def test_the_farm_www_plugin_without_its_service_is_refused(tmp_path: Path) -> None:
    """The farm www plugin naming a FarmService that c['services'] lacks is named."""
    errors = refused(tmp_path, '"wsgi_dashboards"] = [farm_menu()]',
                     '"farm"] = {"service": "farm2"}')
    assert ("c['www']['plugins']['farm'] serves the FarmService 'farm2', but c['services'] has"
            " no util.FarmService named 'farm2'") in errors


def test_artifact_steps_without_a_repository_are_refused(tmp_path: Path) -> None:
    """An artifact step in a builder whose FarmService has no artifacts= names the builder."""
    errors = refused(tmp_path, 'artifacts=util.ArtifactRepository(token_builders=["hello-*"]),',
                     "")
    assert ("builder 'hello-farm': step 'publish' (steps.ArtifactUpload) needs the artifact"
            " repository, but the FarmService 'farm' has no artifacts= argument") in errors


def test_an_on_demand_scheduler_without_on_demand_is_refused(tmp_path: Path) -> None:
    """An OnDemandScheduler whose FarmService has no on_demand= says what to give it."""
    errors = refused(tmp_path, "on_demand=util.OnDemandBuilds(),", "")
    assert "OnDemandScheduler 'tool': on-demand builds are off" in errors
    assert "util.FarmService(on_demand=util.OnDemandBuilds())" in errors


def test_an_on_demand_scheduler_naming_no_builder_is_refused(tmp_path: Path) -> None:
    """Buildbot itself refuses an OnDemandScheduler whose builder does not exist."""
    errors = refused(tmp_path, 'builder="hello-farm"', 'builder="hello-fram"')
    assert "Unknown builder 'hello-fram' in scheduler 'tool'" in errors


def test_a_misspelled_keyword_is_named_with_the_accepted_ones(tmp_path: Path) -> None:
    """ArtifactUpload(workersrcs=...) names the keyword and the accepted ones, no traceback."""
    errors = refused(tmp_path, 'workersrc="out/tool"', 'workersrcs="out/tool"')
    assert ("steps.ArtifactUpload: unknown argument 'workersrcs' (did you mean 'workersrc'?);"
            " it takes workersrc, dest, kind, project, maxsize") in errors
    assert "missing" not in errors


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    """Several mistakes and an unknown keyword that can be left out are all reported together."""
    text = GOOD.replace('buildlet_type="local"', 'buildlet_type="lcoal", keepalive_intervall=5')
    text = text.replace('BuildRecorder(builders=["hello-farm"])',
                        'BuildRecorder(builders=["hello-fram"])')
    done = checkconfig(tmp_path, text)
    assert done.returncode != 0
    assert "unknown argument 'keepalive_intervall' (did you mean 'keepalive_interval'?)" in (
        done.stderr)
    assert "buildlet_type 'lcoal' is not a pool" in done.stderr
    assert "builders names 'hello-fram'" in done.stderr


TEST_CONFIGS = sorted(p.relative_to(ROOT) for p in (ROOT / "tests").glob("*/*.cfg"))
TEST_CONFIG_ENV = {
    "FARM_WORKER_PASSWORD": "password", "FARM_DB_URL": "sqlite:///farm.sqlite",
    "FARM_ARTIFACTS": "artifacts", "FARM_BUILDBOT_DB": "sqlite:///state.sqlite",
    "FARM_JANITOR_INTERVAL": "60", "FARM_S3_BUCKET": "bucket",
    "FARM_S3_ENDPOINT": "http://127.0.0.1:9/",
    "FARM_TEST_BASE_IMAGE": "base", "FARM_TEST_BUSYBOX_IMAGE": "busybox",
    "FARM_TEST_OUTSIDE": "/nonexistent", "FARM_UI_ADMIN_PASSWORD": "password",
    "FARM_UI_RELEASE": "release",
}


@pytest.mark.parametrize("config", TEST_CONFIGS, ids=str)
def test_the_test_masters_configurations_pass(config: Path, tmp_path: Path) -> None:
    """The master.cfg files the test masters run are free of the mistakes checked here."""
    env = {**os.environ, **TEST_CONFIG_ENV, "FARM_S3_SECRETS": str(tmp_path),
           "FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port())}
    done = subprocess.run([BUILDBOT, "checkconfig", str(ROOT / config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
