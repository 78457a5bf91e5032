"""Container tasks against the Docker CLI doing the same job.

* a trivial task (``true``): ContainerTask's container lifecycle (create with the control
  directory, attach, start, wait, outputs check, remove) vs
  ``docker run --rm --network none IMAGE true``;
* collecting 5,000 changed files / 100 MiB into a directory: the filtered zstd archive of
  the task's changes and the worker's unpack of it into a directory vs ``docker cp
  CONTAINER:/work/out DIR`` (both end with the 5,000 files written in a directory; best of
  5). The mapped path ``/work/out`` is not in the image, so ContainerTask reads its tar and
  needs no change list; a second row shows the same collection where the image had the
  path, which takes the engine's change list first. Both rows are measured on the disk
  (the benchmark's temporary directory) and again on a tmpfs (``/dev/shm``, where there is
  one with 1 GiB free): on this machine's ext4, creating a file costs 20 us or 480 us
  depending on the state of the inode allocator, which moves the disk rows of both sides
  from round to round; on the tmpfs, what is left is the tools' own work;
* copying 100 MiB (5,000 files) in: the tar stream recorded and streamed into the engine vs
  ``docker cp DIR CONTAINER:/work``;
* a task with those 100 MiB as inputs (and an empty ``out`` directory among them) that
  changes nothing, end to end (create, copy in, start, wait, outputs check,
  collect, remove) vs the CLI sequence ``docker create``, ``docker cp`` in, ``docker start
  -a``, ``docker diff``, ``docker cp`` out of the task's output directory (``out``, empty)
  into a new directory, ``docker rm``: what a script doing the task with the CLI runs. The
  CLI user is told where the outputs are and copies back only that directory; ContainerTask
  is told nothing (its default: whatever the task changed under the inputs comes back), so
  it must find out that none of the 5,000 inputs changed, and does so from their sizes and
  times (files modified more than 2 s before the task), which it reads in the tar of the
  inputs the engine sends (the engine has no listing without the data): the reference does
  less. A second row tells ContainerTask what the CLI user knows (``outputs`` of the task's
  ``out`` directory), so both do the same work.

And on a real master and worker (the worker reaching the master through a relay that counts
the bytes of its connection), one ContainerTask with 100 MiB of inputs (100 files, made
before the task as a checkout is) that writes 5,000 output files (100 MiB) which come back
to the build directory: ``engine="worker"`` vs the master's engine, the build's wall time
and the bytes that crossed the worker's connection both ways.

The measurements run in a child process with its own reactor (the global reactor runs once
per process, and other benchmark modules use it too).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

ROUNDS = 7
COLLECT_ROUNDS = 5
FILES = 5000
FILE_SIZE = 100 * (1 << 20) // FILES
MAKE_FILES = (
    "import os\n"
    "os.makedirs('/work/out', exist_ok=True)\n"
    f"for i in range({FILES}):\n"
    f"    open(f'/work/out/f{{i:05d}}', 'wb').write(os.urandom({FILE_SIZE}))\n"
)
CLI_ENV = {**os.environ, "DOCKER_API_VERSION": "1.41"}


def docker_cli(*args: str) -> None:
    """Run the docker CLI with ``args`` (API version 1.41), its standard output discarded; raise if
    it fails."""
    subprocess.run(["docker", *args], env=CLI_ENV, check=True, stdout=subprocess.DEVNULL)


def timed(action: Callable[[], Any]) -> float:
    """The wall-clock seconds ``action()`` took."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


async def atimed(action: Callable[[], Coroutine[Any, Any, Any]]) -> float:
    """The wall-clock seconds awaiting ``action()`` took."""
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


async def measure(base: str, busybox: str, workdir: Path) -> list[tuple[str, float, float]]:
    """The ContainerTask against docker CLI rows: what, ContainerTask's seconds, the CLI's
    seconds (median of ROUNDS for the trivial task, best of COLLECT_ROUNDS for collecting,
    best of 3 for the others)."""
    from buildbot_farm.containers._engine import ContainerConfig, Engine
    from buildbot_farm.containers._run import TaskRun, labels_for
    from buildbot_farm.remote import unpack
    from buildbot_farm.remote.task_paths import InputMap, OutputFilter
    from tests.harness.twisted_reactor import reactor

    engine = await Engine.connect(reactor, None)

    def task(
        image: str, command: list[str], inputs: dict[str, str], outputs: list[str] | None = None
    ) -> TaskRun:
        mapping = InputMap.parse(inputs, "/work")
        config = ContainerConfig(
            TaskRun.unique_name("bench"), image, command, {}, "/work",
            labels_for("benchmark"), None, {"pids_limit": 4096},
        )
        return TaskRun(engine, config, mapping, OutputFilter(outputs, mapping))

    async def trivial() -> None:
        run = task(busybox, ["true"], {})
        await run.create([])
        await run.run(lambda stream, data: None, None)
        with tempfile.TemporaryFile() as archive:
            await run.collect(archive)
        await run.read_outputs()
        await run.remove()

    ours = [await atimed(trivial) for _ in range(ROUNDS)]
    theirs = [timed(lambda: docker_cli("run", "--rm", "--network", "none", busybox, "true"))
              for _ in range(ROUNDS)]
    rows = [("trivial task (true)", statistics.median(ours), statistics.median(theirs))]

    made = task(base, ["python3", "-c", MAKE_FILES], {"out": "/work/out"})
    await made.create(["/work/out"])
    await made.run(lambda stream, data: None, None)
    cid = made.container_id
    assert cid is not None

    async def collect_rows(where: Path, on: str) -> list[tuple[str, float, float]]:
        ours: list[float] = []
        listed: list[float] = []
        theirs: list[float] = []
        for _ in range(COLLECT_ROUNDS):  # in turn: the machine's load changes while they run
            for scopes_are_new, times in ((True, ours), (False, listed)):
                made.scopes_are_new = scopes_are_new  # False: as if the image had /work/out
                unpacked = where / "unpacked"
                with tempfile.NamedTemporaryFile(dir=where) as archive:
                    async def collect(archive: Any = archive, dest: Path = unpacked) -> None:
                        made.changes = None  # each round asks the engine again
                        packed = await made.collect(archive)
                        assert packed is not None
                        archive.flush()
                        manifest = where / "manifest.json"
                        manifest.write_text(json.dumps(packed.manifest()))
                        dest.mkdir()
                        if unpack.main([archive.name, str(manifest), str(dest)]) != 0:
                            raise RuntimeError("unpacking the collected archive failed")
                    times.append(await atimed(collect))
                shutil.rmtree(unpacked)
            target = where / "cp-out"
            theirs.append(timed(functools.partial(docker_cli, "cp", f"{cid}:/work/out",
                                                  str(target))))
            shutil.rmtree(target)
        return [(f"collect 5,000 files into a dir, {on}", min(ours), min(theirs)),
                ("  the same, /work/out in the image", min(listed), min(theirs))]

    rows += await collect_rows(workdir, "disk")
    memory = Path("/dev/shm")
    if memory.is_dir() and shutil.disk_usage(memory).free > 1 << 30:
        with tempfile.TemporaryDirectory(prefix="farm-bench-", dir=memory) as in_memory:
            rows += await collect_rows(Path(in_memory), "tmpfs")

    tree = workdir / "tree"
    docker_cli("cp", f"{cid}:/work/out", str(tree))
    (tree / "out").mkdir()
    await made.remove()
    ours, theirs = [], []
    for _ in range(3):
        run = task(busybox, ["true"], {"tree": "/work/tree"})
        await run.create(["/work/tree"])
        ours.append(await atimed(functools.partial(run.copy_in, "/work/tree", tar_of(tree))))
        await run.remove()
        run = task(busybox, ["true"], {})
        await run.create(["/work"])
        cid = run.container_id
        assert cid is not None
        theirs.append(timed(functools.partial(docker_cli, "cp", str(tree), f"{cid}:/work/tree")))
        await run.remove()
    rows.append(("copy 100 MiB / 5,000 files in", min(ours), min(theirs)))

    settled = time.time() - 3600  # a checkout made before the task, as builds have
    for path in tree.rglob("*"):
        os.utime(path, (settled, settled))

    async def with_inputs(outputs: list[str] | None = None) -> None:
        run = task(busybox, ["true"], {"tree": "/work/tree"}, outputs)
        await run.create(["/work/tree"])
        await run.copy_in("/work/tree", tar_of(tree))
        await run.run(lambda stream, data: None, None)
        with tempfile.TemporaryFile(dir=workdir) as archive:
            packed = await run.collect(archive)
        await run.read_outputs()
        await run.remove()
        if packed is not None and packed.files:
            raise RuntimeError(f"{len(packed.files)} unchanged inputs came back")

    def cli_with_inputs() -> None:
        name = TaskRun.unique_name("bench-cli")
        docker_cli("create", "--name", name, "--network", "none", "-w", "/work", busybox, "true")
        docker_cli("cp", str(tree), f"{name}:/work/tree")
        docker_cli("start", "-a", name)
        docker_cli("diff", name)
        outputs = workdir / "cli-outputs"
        docker_cli("cp", f"{name}:/work/tree/out", str(outputs))
        shutil.rmtree(outputs)
        docker_cli("rm", name)

    told = functools.partial(with_inputs, ["/work/tree/out/**"])
    ours, ours_told, theirs = [], [], []
    for _ in range(3):  # in turn: the machine's load changes while they run
        ours.append(await atimed(with_inputs))
        ours_told.append(await atimed(told))
        theirs.append(timed(cli_with_inputs))
    rows.append(("task, 100 MiB unchanged inputs", min(ours), min(theirs)))
    rows.append(("  the same, outputs=out/**", min(ours_told), min(theirs)))
    engine.client.close()
    return rows


def tar_of(directory: Path) -> Iterator[bytes]:
    """``tar -C directory -c .`` as chunks (what a worker's directory upload sends)."""
    with subprocess.Popen(["tar", "-C", str(directory), "-c", "."], stdout=subprocess.PIPE) as tar:
        assert tar.stdout is not None
        while chunk := tar.stdout.read(512 * 1024):
            yield chunk


ENGINES_MASTER_CFG = """
import os
from buildbot.plugins import schedulers, steps, util, worker

c = BuildmasterConfig = {"buildbotNetUsageData": None, "db": {"db_url": "sqlite:///state.sqlite"}}
WEB_PORT = int(os.environ["FARM_WEB_PORT"])
c["buildbotURL"] = f"http://127.0.0.1:{WEB_PORT}/"
c["services"] = [util.FarmService(name="farm")]
c["workers"] = [worker.Worker("local-worker", os.environ["FARM_WORKER_PASSWORD"])]
c["protocols"] = {"pb": {"port": f"tcp:{os.environ['FARM_PB_PORT']}:interface=127.0.0.1"}}
c["www"] = {"port": f"tcp:{WEB_PORT}:interface=127.0.0.1"}
MAKE = os.environ["FARM_BENCH_MAKE_FILES"].replace("/work/out", "/work/src/out")
c["builders"] = [
    util.BuilderConfig(name=engine, workernames=["local-worker"], factory=util.BuildFactory([
        steps.ContainerTask(name="task", image=os.environ["FARM_BENCH_IMAGE"], engine=engine,
                            inputs={"src": "/work/src"}, workdir="/work/src",
                            outputs=["/work/src/out/**"], command=["python3", "-c", MAKE]),
    ]))
    for engine in ("master", "worker")
]
c["schedulers"] = [schedulers.ForceScheduler(name="force", builderNames=["master", "worker"])]
"""
INPUT_FILES = 100


def measure_engines(base: str, workdir: Path) -> dict[str, list[tuple[float, int, int]]]:
    """Per engine, 3 rounds of (wall time, bytes to the master, bytes from it)."""
    from buildbot_farm.demo import LocalFarm
    from tests.harness.byte_relay import CountingRelay
    from tests.harness.ports import free_port

    config = workdir / "engines.cfg"
    config.write_text(ENGINES_MASTER_CFG)
    farm = LocalFarm(config, workdir / "farm", env={
        "FARM_WEB_PORT": str(free_port()), "FARM_PB_PORT": str(free_port()),
        "FARM_BENCH_IMAGE": base, "FARM_BENCH_MAKE_FILES": MAKE_FILES})
    farm.create()
    relay = CountingRelay(farm.pb_port)
    tac = farm.worker_dir / "buildbot.tac"
    tac.write_text(tac.read_text().replace(f"port = {farm.pb_port}\n", f"port = {relay.port}\n"))
    settled = time.time() - 3600
    for engine in ("master", "worker"):
        src = farm.worker_dir / engine / "build" / "src"
        src.mkdir(parents=True)
        for index in range(INPUT_FILES):
            path = src / f"in{index:03d}.bin"
            path.write_bytes(os.urandom(100 * (1 << 20) // INPUT_FILES))
            os.utime(path, (settled, settled))
    found: dict[str, list[tuple[float, int, int]]] = {"master": [], "worker": []}
    farm.start()
    try:
        for _ in range(3):
            for engine in ("worker", "master"):
                shutil.rmtree(farm.worker_dir / engine / "build" / "src" / "out",
                              ignore_errors=True)
                to_before, from_before = relay.counts()
                started = time.perf_counter()
                build = force_and_wait(farm, engine)
                wall = time.perf_counter() - started
                to_after, from_after = relay.counts()
                if build["results"] != 0:
                    raise RuntimeError(f"the {engine} build failed: {build['state_string']}")
                out = farm.worker_dir / engine / "build" / "src" / "out"
                if len(list(out.iterdir())) != FILES:
                    raise RuntimeError(f"the {engine} build did not bring back {FILES} files")
                found[engine].append((wall, to_after - to_before, from_after - from_before))
    finally:
        farm.stop()
        relay.stop()
    return found


def force_and_wait(farm: Any, builder: str) -> dict[str, Any]:
    """Force ``builder``; the finished build, polled every 50 ms."""
    answer = farm.api("forceschedulers/force", {
        "jsonrpc": "2.0", "id": 1, "method": "force",
        "params": {"builderNames": [builder], "reason": "benchmark"}})
    request = next(iter(answer["result"][1].values()))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        builds = farm.api(f"buildrequests/{request}/builds")["builds"]
        if builds and builds[0]["complete"]:
            return dict(builds[0])
        time.sleep(0.05)
    raise RuntimeError(f"the {builder} build did not finish within 600 s")


def print_engines(found: dict[str, list[tuple[float, int, int]]]) -> None:
    """The engine comparison: wall time range and ratio, MiB through the master."""
    mib = 1 << 20
    print(f"\nengine=\"worker\" vs the master's engine: 100 MiB of inputs, {FILES:,} output"
          " files (100 MiB), 3 rounds (min-max)")
    print(f"{'':28} {'engine=worker':>16} {'master engine':>16} {'ratio':>12}  target")
    worker = [w for w, _, _ in found["worker"]]
    master = [w for w, _, _ in found["master"]]
    ratios = [w / m for w, m in zip(worker, master)]
    print(f"{'wall time (s)':28} {min(worker):7.1f}-{max(worker):<7.1f} "
          f"{min(master):7.1f}-{max(master):<7.1f} {min(ratios):5.2f}-{max(ratios):.2f}x  <= 1.0x")
    for index, what in ((1, "MiB worker -> master"), (2, "MiB master -> worker")):
        ours = [row[index] / mib for row in found["worker"]]
        theirs = [row[index] / mib for row in found["master"]]
        print(f"{what:28} {min(ours):7.2f}-{max(ours):<7.2f} "
              f"{min(theirs):7.1f}-{max(theirs):<7.1f}")


def child() -> None:
    """The child process's work: make sure of the images, run :func:`measure` on this process's
    reactor and print its table, then measure and print the engine comparison."""
    import docker
    from twisted.internet import defer, task

    from tests.harness.images import ensure_base_image, ensure_busybox_image

    client = docker.from_env()
    base, busybox = ensure_base_image(client), ensure_busybox_image(client)
    client.close()
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as workdir:
        rows: list[tuple[str, float, float]] = []

        async def work(reactor: Any) -> None:
            rows.extend(await measure(base, busybox, Path(workdir)))

        try:
            task.react(lambda reactor: defer.ensureDeferred(work(reactor)))
        except SystemExit as done:
            if done.code:
                raise
        print(f"{'what':32} {'ContainerTask':>14} {'docker CLI':>12} {'ratio':>7}  target")
        for what, ours, theirs in rows:
            print(f"{what:32} {ours * 1000:11.0f} ms {theirs * 1000:9.0f} ms"
                  f" {ours / theirs:6.2f}x  <= 1.20x")
        print_engines(measure_engines(base, Path(workdir)))


def main() -> None:
    """Measure in a child process (its own reactor) and print its table.

    The engine is the one that answers on Docker's default socket, or a ``dockerd`` started
    here for the run and stopped after it (as the tests' harness does).
    """
    from tests.harness.docker_engine import DockerEngine

    root = Path(__file__).resolve().parent.parent
    engine = DockerEngine()
    engine.ensure()
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.bench_containers"], cwd=root,
                              env={**os.environ, "DOCKER_HOST": f"unix://{engine.socket_path}"},
                              check=False)
    finally:
        engine.stop()
    if done.returncode != 0:
        raise RuntimeError(f"the container benchmark failed (exit {done.returncode})")


if __name__ == "__main__":
    child()
