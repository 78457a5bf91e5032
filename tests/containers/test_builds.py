"""ContainerTask in real builds: a real master and worker, the real Docker engine."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import urllib.request
import zipfile
from pathlib import Path

import docker
import pytest

from tests.containers.conftest import BuildFarm

pytestmark = [pytest.mark.docker, pytest.mark.master]

SUCCESS, FAILURE, CANCELLED = 0, 2, 6
PAYLOAD = 4 << 20  # as in master.cfg
ENGINES = pytest.mark.parametrize("engine", ["master", "worker"])


def builder(name: str, engine: str) -> str:
    """The builder running ``name``'s task on ``engine`` (see master.cfg)."""
    return name if engine == "master" else f"{name}-on-worker"


def leftovers(build_farm: BuildFarm, client: docker.DockerClient, build: dict) -> list:
    """Containers and networks still labelled with ``build``'s id (and this test's master)."""
    selector = {"label": [f"buildbot-farm.build={build['buildid']}",
                          f"buildbot-farm.master={build_farm.master_name}"]}
    return client.containers.list(all=True, filters=selector) + client.networks.list(
        filters=selector
    )


def test_leftovers_of_a_crashed_master_are_reaped_at_start(
    build_farm: BuildFarm, docker_client: docker.DockerClient
) -> None:
    """A container a crash left, labelled with this master's name, is gone once it started."""
    ids = {c.id for c in docker_client.containers.list(all=True)}
    assert build_farm.leftover not in ids


def test_happy_path_copies_runs_and_brings_back(
    build_farm: BuildFarm, docker_client: docker.DockerClient
) -> None:
    """Inputs go in, the task's new, changed and deleted files come back, outputs set properties."""
    build = build_farm.build("happy")
    task = build_farm.step(build, "task")
    log = build_farm.log(task)
    assert build["results"] == SUCCESS, log
    assert "to-stdout" in log
    assert "to-stderr" in log
    assert "copied 'src' from the worker to /work/src" in log
    work = build_farm.builddir / "happy" / "build"
    assert (work / "src/out/hello.pyz").is_file()
    assert not (work / "src/stale.txt").exists(), "a file the task deleted is deleted on the worker"
    assert (work / "src/mod.txt").read_text() == "wxyz"
    manifest = json.loads(build_farm.log(task, "manifest.json"))
    assert {e["path"] for e in manifest["files"]} == {"src/out", "src/out/hello.pyz", "src/mod.txt"}
    assert manifest["deleted"] == ["src/stale.txt"]
    properties = build_farm.properties(build)
    assert properties["version"] == "7.1"
    assert properties["notes"] == "line one\nline two"
    assert "hello from the zipapp" in build_farm.log(build_farm.step(build, "use"))
    assert leftovers(build_farm, docker_client, build) == []
    kept = {Path(a["path"]).name: a for a in properties["farm_artifacts"]}
    assert set(kept) == {"task.tar.zst", "task.manifest.json"}, "archive and manifest not kept"
    downloaded = {}
    for name, artifact in kept.items():
        with urllib.request.urlopen(artifact["url"], timeout=30) as response:
            downloaded[name] = response.read()
        assert hashlib.sha256(downloaded[name]).hexdigest() == artifact["sha256"]
        assert len(downloaded[name]) == artifact["size"]
    assert json.loads(downloaded["task.manifest.json"]) == manifest
    listing = f"{build_farm.farm.web_url}plugins/farm/api/builds?name=happy"
    deadline = time.monotonic() + 30
    while not (records := build_farm.farm.get_json(listing)) and time.monotonic() < deadline:
        time.sleep(0.2)
    [record] = [r for r in records if r["buildUrl"].endswith(f"/builds/{build['number']}")]
    assert record["binaries"] == [], "the task's archive and manifest are not the build's binaries"
    assert {Path(b["path"]).name for b in record["byproducts"]} == set(kept)


def tree(root: Path) -> dict[str, str]:
    """Each path under ``root``: its kind and content digest (or link target); a zip's
    digest is of its members' contents (zipapp stores the times the build wrote them)."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = f"link {path.readlink()}"
        elif path.is_dir():
            found[name] = "dir"
        else:
            found[name] = f"file {oct(path.stat().st_mode & 0o777)} {content_digest(path)}"
    return found


def content_digest(path: Path) -> str:
    """sha256 of a file, or of a zip's member names and contents."""
    if not zipfile.is_zipfile(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as archive:
        for member in sorted(archive.namelist()):
            digest.update(member.encode() + b"\0" + archive.read(member))
    return digest.hexdigest()


def test_the_worker_engine_gives_the_master_paths_results(
    build_farm: BuildFarm, docker_client: docker.DockerClient
) -> None:
    """The same task on the worker's engine: the same files, manifest, properties and log lines."""
    results = {}
    for engine in ("master", "worker"):
        # from an empty build directory each time (an earlier test may have built "happy")
        shutil.rmtree(build_farm.builddir / builder("happy", engine), ignore_errors=True)
        build = build_farm.build(builder("happy", engine))
        task = build_farm.step(build, "task")
        log = build_farm.log(task)
        assert build["results"] == SUCCESS, log
        assert leftovers(build_farm, docker_client, build) == []
        for line in ("to-stdout", "to-stderr", "copied 'src' from the worker to /work/src",
                     "the task exited with status 0"):
            assert line in log, (engine, line)
        manifest = json.loads(build_farm.log(task, "manifest.json"))
        properties = build_farm.properties(build)
        results[engine] = (
            tree(build_farm.builddir / builder("happy", engine) / "build"),
            sorted((e["path"], e["type"], e.get("size")) for e in manifest["files"]),
            manifest["deleted"],
            properties["version"], properties["notes"],
            build_farm.log(build_farm.step(build, "use")).count("hello from the zipapp"),
        )
        if engine == "worker":
            assert "farm_artifacts" not in properties, "the archive was never on the master"
    assert results["worker"] == results["master"]
    assert "src/out/hello.pyz" in results["worker"][0]


@ENGINES
def test_inputs_and_outputs_cross_to_the_master_only_on_its_engine(
    build_farm: BuildFarm, engine: str
) -> None:
    """On the worker's engine neither the inputs nor the outputs cross the worker's connection;
    on the master's they both do."""
    build, to_master, from_master = build_farm.build_counting(builder("payload", engine))
    assert build["results"] == SUCCESS, build_farm.log(build_farm.step(build, "task"))
    out = build_farm.builddir / builder("payload", engine) / "build" / "src" / "out.bin"
    assert out.stat().st_size == PAYLOAD
    if engine == "master":
        assert to_master > PAYLOAD, "the inputs went through the master"
        assert from_master > PAYLOAD, "the outputs went through the master"
    else:
        assert to_master < (1 << 20), to_master
        assert from_master < (1 << 20), from_master


@ENGINES
def test_outputs_patterns_choose_what_comes_back(build_farm: BuildFarm, engine: str) -> None:
    """Only changes matching ``outputs`` come back: other new files and deletions stay behind."""
    build = build_farm.build(builder("filtered", engine))
    assert build["results"] == SUCCESS
    work = build_farm.builddir / builder("filtered", engine) / "build"
    assert (work / "src/out/a").read_text() == "a\n"
    assert not (work / "src/b.txt").exists()
    assert (work / "src/keep.txt").exists()


@ENGINES
def test_a_mapped_path_the_image_has_brings_back_only_the_tasks_changes(
    build_farm: BuildFarm, engine: str
) -> None:
    """Where the image had the mapped path (busybox's /etc), its own files stay in the
    container: only what the task added or deleted comes back."""
    build = build_farm.build(builder("in-image", engine))
    task = build_farm.step(build, "task")
    assert build["results"] == SUCCESS, build_farm.log(task)
    manifest = json.loads(build_farm.log(task, "manifest.json"))
    assert [e["path"] for e in manifest["files"]] == ["etc/new.txt"]
    assert manifest["deleted"] == ["etc/gone.txt"]
    etc = build_farm.builddir / builder("in-image", engine) / "build" / "etc"
    assert sorted(p.name for p in etc.iterdir()) == ["mine.txt", "new.txt"]


@ENGINES
def test_output_streams_into_the_log_while_the_task_runs(
    build_farm: BuildFarm, engine: str
) -> None:
    """A line the task prints is in the step log seconds before the task ends.

    The task sleeps 12 s between its lines: through the worker (engine="worker") output
    arrives as buildbot-worker sends it, at least every 5 s.
    """
    request = build_farm.start(builder("live", engine))
    build = build_farm.running_build(request)
    started = time.monotonic()
    deadline = started + 60
    seen_first = None
    while time.monotonic() < deadline:
        steps = build_farm.farm.api(f"builds/{build['buildid']}/steps")["steps"]
        task = [s for s in steps if s["name"] == "task"]
        if task:
            lines = build_farm.log(task[0]).splitlines()
            if "first" in lines:
                seen_first = time.monotonic()
                assert "second" not in lines
                break
        time.sleep(0.05)
    assert seen_first is not None, "the first line never showed up"
    finished = build_farm.wait(build["buildid"])
    ended = time.monotonic()
    assert finished["results"] == SUCCESS
    assert ended - seen_first > 2.0, "the first line arrived only when the task ended"


@ENGINES
def test_timeout_kills_the_task_and_fails_the_step(
    build_farm: BuildFarm, engine: str, docker_client: docker.DockerClient
) -> None:
    """A task running past ``timeout`` is killed, the step fails as timed out, nothing is left."""
    started = time.monotonic()
    build = build_farm.build(builder("timeout", engine))
    assert time.monotonic() - started < 30
    assert build["results"] == FAILURE
    task = build_farm.step(build, "task")
    assert "timed out after 2 s" in build_farm.log(task)
    assert "timed out" in task["state_string"]
    assert leftovers(build_farm, docker_client, build) == []


@ENGINES
def test_interrupt_from_the_web_ui_stops_and_removes(
    build_farm: BuildFarm, engine: str, docker_client: docker.DockerClient
) -> None:
    """Stopping the build through the REST API kills and removes the container at once."""
    request = build_farm.start(builder("interrupt", engine))
    build = build_farm.running_build(request)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        steps = build_farm.farm.api(f"builds/{build['buildid']}/steps")["steps"]
        if steps and any("started" in build_farm.log(s) for s in steps if s["name"] == "task"):
            break
        time.sleep(0.1)
    stopped_at = time.monotonic()
    build_farm.farm.api(
        f"builds/{build['buildid']}",
        {"jsonrpc": "2.0", "id": 1, "method": "stop", "params": {"reason": "test stops it"}},
    )
    finished = build_farm.wait(build["buildid"])
    assert time.monotonic() - stopped_at < 20
    assert finished["results"] == CANCELLED
    assert leftovers(build_farm, docker_client, finished) == []


@ENGINES
def test_failing_command_fails_the_step(build_farm: BuildFarm, engine: str) -> None:
    """A non-zero exit status fails the step and is said in the log."""
    build = build_farm.build(builder("failing", engine))
    assert build["results"] == FAILURE
    log = build_farm.log(build_farm.step(build, "task"))
    assert "boom" in log
    assert "exited with status 3" in log


@ENGINES
def test_unknown_image_says_no_registry_is_pulled(build_farm: BuildFarm, engine: str) -> None:
    """A missing image fails the step, saying nothing is pulled unless pull=True."""
    build = build_farm.build(builder("bad-image", engine))
    assert build["results"] == FAILURE
    log = build_farm.log(build_farm.step(build, "task"))
    assert "'farm-test-missing:none' is not on the Docker engine" in log
    assert "pull=True" in log


def test_no_engine_on_the_worker_fails_the_step_saying_what_to_do(
    build_farm: BuildFarm
) -> None:
    """engine='worker' on a worker with no engine at the socket fails the step with advice."""
    build = build_farm.build("no-engine-on-worker")
    assert build["results"] == FAILURE
    log = build_farm.log(build_farm.step(build, "task"))
    assert "ContainerTask: no Docker engine answers on this worker at unix://" in log
    assert "engine='master'" in log


@ENGINES
def test_input_escaping_the_build_dir_fails(build_farm: BuildFarm, engine: str) -> None:
    """An input path that renders to somewhere outside the build directory fails the step."""
    build = build_farm.build(builder("escape-input", engine))
    assert build["results"] == FAILURE
    log = build_farm.log(build_farm.step(build, "task"))
    assert f"'../{builder('escape-input', engine)}' escapes the build directory" in log


@ENGINES
def test_changes_through_a_worker_symlink_are_refused(build_farm: BuildFarm, engine: str) -> None:
    """A change that would be written through a symlink on the worker is refused; nothing leaks."""
    build = build_farm.build(builder("escape-through-link", engine))
    assert build["results"] == FAILURE
    log = build_farm.log(build_farm.step(build, "task"))
    assert "would be written through the symbolic link 'out'" in log
    outside = build_farm.farm.basedir / "outside"
    assert list(outside.iterdir()) == []


@ENGINES
def test_a_link_pointing_outside_is_refused(build_farm: BuildFarm, engine: str) -> None:
    """A symbolic link to a path outside the build dir is refused and nothing is written."""
    build = build_farm.build(builder("escape-by-link", engine))
    assert build["results"] == FAILURE
    log = build_farm.log(build_farm.step(build, "task"))
    assert "a symbolic link to '/etc/passwd'" in log
    work = build_farm.builddir / builder("escape-by-link", engine) / "build"
    assert not (work / "fine.txt").exists()
    assert not (work / "pw").is_symlink()


@ENGINES
def test_network_is_none_unless_asked(
    build_farm: BuildFarm, engine: str, docker_client: docker.DockerClient
) -> None:
    """By default a task sees only loopback; network= gives it its own internal network."""
    build = build_farm.build(builder("network", engine))
    assert build["results"] == SUCCESS
    assert "'eth0'" not in build_farm.log(build_farm.step(build, "none"))
    assert "'eth0'" in build_farm.log(build_farm.step(build, "inner"))
    assert leftovers(build_farm, docker_client, build) == []
