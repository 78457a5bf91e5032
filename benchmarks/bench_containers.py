"""Container tasks against the Docker CLI doing the same job.

* a trivial task (``true``): ContainerTask's container lifecycle (create with the control
  directory, attach, start, wait, change list, outputs check, remove) vs
  ``docker run --rm --network none IMAGE true``;
* collecting 5,000 changed files / 100 MiB into a directory: change list, filtered zstd
  archive and the worker's unpack of it into a directory vs ``docker cp CONTAINER:/work/out
  DIR`` (both end with the 5,000 files written in a directory);
* copying 100 MiB (5,000 files) in: the tar stream recorded and streamed into the engine vs
  ``docker cp DIR CONTAINER:/work``;
* a task with those 100 MiB as inputs that changes nothing, end to end (create, copy in,
  start, wait, change list, outputs check, remove) vs the CLI sequence ``docker create``,
  ``docker cp`` in, ``docker start -a``, ``docker diff``, ``docker rm``. The CLI user copies
  nothing back (told by nothing); ContainerTask must find out that nothing changed, and
  does so from the inputs' sizes and times (files modified more than 2 s before the task).

The measurements run in a child process with its own reactor (the global reactor runs once
per process, and other benchmark modules use it too).
"""

from __future__ import annotations

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
    subprocess.run(["docker", *args], env=CLI_ENV, check=True, stdout=subprocess.DEVNULL)


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


async def atimed(action: Callable[[], Coroutine[Any, Any, Any]]) -> float:
    start = time.perf_counter()
    await action()
    return time.perf_counter() - start


async def measure(base: str, busybox: str, workdir: Path) -> list[tuple[str, float, float]]:
    from twisted.internet import reactor

    from buildbot_farm.containers._engine import ContainerConfig, Engine
    from buildbot_farm.containers._run import TaskRun, labels_for
    from buildbot_farm.remote import unpack
    from buildbot_farm.remote.task_paths import InputMap, OutputFilter

    engine = await Engine.connect(reactor, None)

    def task(image: str, command: list[str], inputs: dict[str, str]) -> TaskRun:
        mapping = InputMap.parse(inputs, "/work")
        config = ContainerConfig(
            TaskRun.unique_name("bench"), image, command, {}, "/work",
            labels_for("benchmark"), None, {"pids_limit": 4096},
        )
        return TaskRun(engine, config, mapping, OutputFilter(None, mapping))

    async def trivial() -> None:
        run = task(busybox, ["true"], {})
        await run.create([])
        await run.run(lambda stream, data: None, None)
        await run.list_changes()
        await run.read_outputs()
        with tempfile.TemporaryFile() as archive:
            await run.collect(archive)
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
    ours, theirs = [], []
    for _ in range(3):
        unpacked = workdir / "unpacked"
        with tempfile.NamedTemporaryFile(dir=workdir) as archive:
            async def collect(archive: Any = archive, dest: Path = unpacked) -> None:
                await made.list_changes()
                packed = await made.collect(archive)
                assert packed is not None
                archive.flush()
                manifest = workdir / "manifest.json"
                manifest.write_text(json.dumps(packed.manifest()))
                dest.mkdir()
                if unpack.main([archive.name, str(manifest), str(dest)]) != 0:
                    raise RuntimeError("unpacking the collected archive failed")
            ours.append(await atimed(collect))
        shutil.rmtree(unpacked)
        target = workdir / "cp-out"
        theirs.append(timed(lambda t=target: docker_cli("cp", f"{cid}:/work/out", str(t))))
        shutil.rmtree(target)
    rows.append(("collect 5,000 files into a dir", min(ours), min(theirs)))

    tree = workdir / "tree"
    docker_cli("cp", f"{cid}:/work/out", str(tree))
    await made.remove()
    ours, theirs = [], []
    for _ in range(3):
        run = task(busybox, ["true"], {"tree": "/work/tree"})
        await run.create(["/work/tree"])
        ours.append(await atimed(lambda run=run: run.copy_in("/work/tree", tar_of(tree))))
        await run.remove()
        run = task(busybox, ["true"], {})
        await run.create(["/work"])
        cid = run.container_id
        assert cid is not None
        theirs.append(timed(lambda cid=cid: docker_cli("cp", str(tree), f"{cid}:/work/tree")))
        await run.remove()
    rows.append(("copy 100 MiB / 5,000 files in", min(ours), min(theirs)))

    settled = time.time() - 3600  # a checkout made before the task, as builds have
    for path in tree.rglob("*"):
        os.utime(path, (settled, settled))

    async def with_inputs() -> None:
        run = task(busybox, ["true"], {"tree": "/work/tree"})
        await run.create(["/work/tree"])
        await run.copy_in("/work/tree", tar_of(tree))
        await run.run(lambda stream, data: None, None)
        await run.list_changes()
        await run.read_outputs()
        with tempfile.TemporaryFile(dir=workdir) as archive:
            packed = await run.collect(archive)
        await run.remove()
        if packed is not None and packed.files:
            raise RuntimeError(f"{len(packed.files)} unchanged inputs came back")

    def cli_with_inputs() -> None:
        name = TaskRun.unique_name("bench-cli")
        docker_cli("create", "--name", name, "--network", "none", "-w", "/work", busybox, "true")
        docker_cli("cp", str(tree), f"{name}:/work/tree")
        docker_cli("start", "-a", name)
        docker_cli("diff", name)
        docker_cli("rm", name)

    ours = [await atimed(with_inputs) for _ in range(3)]
    theirs = [timed(cli_with_inputs) for _ in range(3)]
    rows.append(("task, 100 MiB unchanged inputs", min(ours), min(theirs)))
    engine.client.close()
    return rows


def tar_of(directory: Path) -> Iterator[bytes]:
    """``tar -C directory -c .`` as chunks (what a worker's directory upload sends)."""
    with subprocess.Popen(["tar", "-C", str(directory), "-c", "."], stdout=subprocess.PIPE) as tar:
        assert tar.stdout is not None
        while chunk := tar.stdout.read(512 * 1024):
            yield chunk


def child() -> None:
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
        print(f"{what:32} {ours * 1000:11.0f} ms {theirs * 1000:9.0f} ms {ours / theirs:6.2f}x"
              "  <= 1.20x")


def main() -> None:
    """Measure in a child process (its own reactor) and print its table."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_containers"], cwd=root,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the container benchmark failed (exit {done.returncode})")


if __name__ == "__main__":
    child()
