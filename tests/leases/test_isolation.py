"""A lessee, through the coordinator, tries to reach the master's files and environment: nothing.

Every attack is a command run on the leased buildlet, as the lessee runs it: through the
coordinator's proxy (the ``buildbot-farm lease run`` command against a real master, or the
coordinator client), never on the agent directly.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from buildbot_farm.demo import LocalFarm
from buildbot_farm.leases import keys
from buildbot_farm.leases.buildlet_user import BUILDLET_USER, ensure_buildlet_user
from buildbot_farm.leases.client import CoordinatorClient, CoordinatorRequestError
from buildbot_farm.leases.providers.isolation import farm_buildlets_dir
from tests.harness.master_cfg import LOOPBACK_MASTER
from tests.harness.ports import free_port
from tests.leases.conftest import StartCoordinator

SECRET = "isolation-test-coordinator-secret"
SCRIPT = Path(sys.executable).parent / "buildbot-farm"

MASTER_CFG = """
import os
from buildbot.plugins import schedulers, steps, util, worker

{preamble}
c["services"] = [util.FarmService(
    coordinator=util.FarmCoordinator(secret="{secret}", pools=[
        util.BuildletPool("local", max_count=2, run_as="{user}", sandbox="bwrap")]),
    records=util.BuildRecords())]
c["workers"] = [worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"])]
c["builders"] = [util.BuilderConfig(name="idle", workernames=["local-worker"],
    factory=util.BuildFactory([steps.ShellCommand(command=["true"])]))]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["idle"])]
"""


def attacks(master: Path) -> dict[str, str]:
    """Shell commands that would each show (or change) something of the master's."""
    return {
        "master.cfg": f"cat {master}/master.cfg",
        "master.cfg, relative": "head ../../../../master.cfg ../../../../../master.cfg",
        "farm.sqlite": f"cat {master}/farm.sqlite",
        "signing key": f"cat {master}/records-signing-key.pem",
        "secrets": f"cat {master}/secrets/*",
        "basedir listing": f"ls {master}",
        "write into the basedir": f"echo pwned > {master}/pwned",
        # The buildlet's own processes may read each other's environments (one user): the
        # attack fails when none of them holds a variable only the master has.
        "master's environment": "cat /proc/1/environ /proc/$PPID/environ /proc/*/environ"
                                " | tr '\\0' '\\n' | grep -a '^FARM_WORKER_PASSWORD='",
    }


def assert_all_fail(run: Any, master: Path, leaked: list[str]) -> None:
    """Each attack exits non-zero and prints none of ``leaked``; the basedir is unchanged."""
    before = sorted(p.name for p in master.iterdir())
    for what, command in attacks(master).items():
        code, output = run("sh", "-c", command)
        assert code != 0, f"{what}: {command!r} succeeded: {output[:300]!r}"
        for secret in leaked:
            assert secret not in output, f"{what}: {command!r} printed {secret[:8]}..."
    code, output = run("env")
    assert code == 0
    names = {line.split("=", 1)[0] for line in output.splitlines() if "=" in line}
    # The agent's own: WORKDIR, its farm-remote.pyz, and its pre-started worker's socket when
    # it keeps one.
    own = {"WORKDIR", "FARM_REMOTE", "FARM_PRESTARTED_WORKER"}
    assert not {n for n in names - own if n.startswith("FARM_")}, output
    assert names <= {"PATH", "HOME", "TMPDIR", "USER", "LOGNAME", "LANG", "LC_ALL", "SHELL",
                     "HOSTNAME", "PWD", "SHLVL", "_", *own}, output
    for secret in leaked:
        assert secret not in output
    assert sorted(p.name for p in master.iterdir()) == before


@pytest.fixture
def bwrap_master(tmp_path: Path) -> Iterator[LocalFarm]:
    """A real master whose process pool runs buildlets as farm-buildlet in bubblewrap."""
    assert ensure_buildlet_user() == BUILDLET_USER, "the tests run as root, to add the user"
    config = tmp_path / "master.cfg"
    config.write_text(MASTER_CFG.format(preamble=LOOPBACK_MASTER, secret=SECRET,
                                        user=BUILDLET_USER))
    farm = LocalFarm(
        config, tmp_path / "farm",
        env={"FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port()),
             "FARM_WORKER_PASSWORD": "the-workers-password-1234"},
    )
    farm.create()
    farm.start()
    yield farm
    farm.stop()


def lease_cli(farm: LocalFarm, *args: str) -> tuple[int, str]:
    """``buildbot-farm lease ARGS`` as user-alice against the master's coordinator."""
    unwanted = {"XDG_CONFIG_HOME", "FARM_COORDINATOR_URL", "FARM_USER", "FARM_KEY"}
    env = {k: v for k, v in os.environ.items() if k not in unwanted}
    env.update(FARM_COORDINATOR_URL=f"{farm.web_url}plugins/farm/coordinator",
               FARM_USER="user-alice", FARM_KEY=keys.user_key(SECRET.encode(), "user-alice"),
               HOME=str(farm.basedir))
    done = subprocess.run([str(SCRIPT), "lease", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    return done.returncode, done.stdout + done.stderr


def test_a_lessee_of_a_sandboxed_process_buildlet_reaches_nothing_of_the_master(
    bwrap_master: LocalFarm,
) -> None:
    """In bubblewrap as farm-buildlet, master.cfg, farm.sqlite, the keys, the secrets, the
    master's environment and its basedir are all out of reach."""
    master = bwrap_master.master_dir
    code, created = lease_cli(bwrap_master, "create", "local")
    assert code == 0, created
    name = created.split()[0]

    def run(*command: str) -> tuple[int, str]:
        return lease_cli(bwrap_master, "run", name, *command)

    code, whoami = run("sh", "-c", "id -un; pwd; test -w . && echo writable")
    assert code == 0, whoami
    user, workdir, writable = whoami.split()
    assert (user, writable) == (BUILDLET_USER, "writable")
    assert not Path(workdir).is_relative_to(bwrap_master.basedir), workdir
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in (
        master, master / "secrets", master / "farm.sqlite", master / "records-signing-key.pem")}
    assert modes == {master: 0o700, master / "secrets": 0o700, master / "farm.sqlite": 0o600,
                     master / "records-signing-key.pem": 0o600}
    leaked = [SECRET, "the-workers-password-1234",
              (master / "records-signing-key.pem").read_text().splitlines()[1],
              *(p.read_text().strip() for p in (master / "secrets").iterdir())]
    assert_all_fail(run, master, leaked)
    assert lease_cli(bwrap_master, "destroy", name)[0] == 0


@pytest_twisted.ensureDeferred
async def test_a_lessee_without_a_sandbox_is_kept_out_by_the_buildlet_user(
    start_coordinator: StartCoordinator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With sandbox="none", run_as keeps the lessee out; a basedir the buildlet user could
    read is refused before any buildlet starts."""
    assert ensure_buildlet_user() == BUILDLET_USER
    monkeypatch.setenv("FARM_WORKER_PASSWORD", "the-masters-own-password")
    # The master's directory where the buildlet user could reach it if its mode let it
    # (tmp_path's parents are private): in the farm's own directory of the temporary dir.
    farm_dir = farm_buildlets_dir(tmp_path)
    master = farm_dir / "master"
    master.mkdir(parents=True, mode=0o755)
    farm_dir.chmod(0o711)
    (master / "master.cfg").write_text("c['secret'] = 'master-cfg-secret'\n")
    (master / "farm.sqlite").touch(mode=0o600)
    (master / "farm.sqlite").write_text("farm-sqlite-secret")
    try:
        running = await start_coordinator(
            root=farm_dir / "local", run_as=BUILDLET_USER, sandbox="none",
            python="/usr/bin/python3", protected=[master],
        )
        alice = running.client()
        with pytest.raises(CoordinatorRequestError, match="can read the master's"):
            await alice.create("local")
        master.chmod(0o700)
        await running.shutdown()
        running = await start_coordinator(
            root=farm_dir / "local", run_as=BUILDLET_USER, sandbox="none",
            python="/usr/bin/python3", protected=[master],
        )
        alice = running.client()
        name = (await alice.create("local"))["Name"]
        outputs: dict[tuple[str, ...], tuple[int, str]] = {}
        for command in [("id", "-un"), *(("sh", "-c", c) for c in attacks(master).values()),
                        ("env",)]:
            outputs[command] = await exec_text(alice, name, command)

        def run(*command: str) -> tuple[int, str]:
            return outputs[command]

        assert run("id", "-un") == (0, f"{BUILDLET_USER}\n")
        assert_all_fail(run, master, ["master-cfg-secret", "farm-sqlite-secret",
                                      "the-masters-own-password"])
        await alice.destroy(name)
    finally:
        shutil.rmtree(farm_dir, ignore_errors=True)


async def exec_text(
    client: CoordinatorClient, name: str, command: tuple[str, ...]
) -> tuple[int, str]:
    """Run ``command`` on the buildlet through the coordinator: its exit code and output."""
    output: list[bytes] = []
    status = await client.exec(name, command[0], list(command[1:]), on_output=output.append)
    return status.exit_code if status.exit_code is not None else -1, b"".join(output).decode()
