"""Collecting a task's changes on the real engine: from the tars of the mapped paths where the
image had none of them, from the engine's change list where it had one."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import docker
import pytest
import pytest_twisted
import zstandard

from buildbot_farm.containers import _engine as engine_calls
from buildbot_farm.containers._engine import ContainerConfig, Engine
from buildbot_farm.containers._run import TaskRun, labels_for
from buildbot_farm.remote.docker_socket import DockerSocket, EngineRefused
from buildbot_farm.remote.task_changes import READ_BACK_LIMIT, Packed
from buildbot_farm.remote.task_paths import OUTPUTS_FILE, InputMap, OutputFilter
from tests.harness.docker_engine import DockerEngine
from tests.harness.twisted_reactor import reactor

pytestmark = pytest.mark.docker

SETTLED = int(time.time()) - 3600  # inputs made before the task, as a checkout is


def inputs_tar(files: dict[str, bytes]) -> bytes:
    """A tar of a directory holding ``files``, as a worker's upload sends it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        root = tarfile.TarInfo(".")
        root.type, root.mode, root.mtime = tarfile.DIRTYPE, 0o755, SETTLED
        tar.addfile(root)
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size, info.mode, info.mtime = len(data), 0o644, SETTLED
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def finished_task(docker_engine: DockerEngine, image: str, target: str, script: str,
                        files: dict[str, bytes], outputs: list[str] | None = None) -> TaskRun:
    """A task that ran ``script`` in ``image`` with ``files`` copied into ``target`` (mapped
    from the worker's ``in``); its container is still there."""
    engine = await Engine.connect(reactor, f"unix://{docker_engine.socket_path}")
    inputs = InputMap.parse({"in": target}, "/")
    config = ContainerConfig(
        TaskRun.unique_name("test-collect"), image, ["sh", "-c", script],
        {"FARM_OUTPUTS": OUTPUTS_FILE}, "/", labels_for("test-collect"), None,
        {"pids_limit": 64},
    )
    run = TaskRun(engine, config, inputs, OutputFilter(outputs, inputs))
    await run.create([target])
    await run.copy_in(target, [inputs_tar(files)])
    outcome = await run.run(lambda stream, data: None, None)
    assert outcome.status == 0
    return run


async def collected(run: TaskRun, tmp_path: Path) -> tuple[Packed | None, list[str]]:
    """What ``run.collect`` packed, and the member names of the archive it wrote."""
    path = tmp_path / "changes.tar.zst"
    with open(path, "wb") as archive:
        packed = await run.collect(archive)
    with open(path, "rb") as written, zstandard.ZstdDecompressor().stream_reader(
            written) as plain, tarfile.open(fileobj=plain, mode="r|") as tar:
        names = [member.name for member in tar] if packed is not None else []
    return packed, names


async def brought_back(run: TaskRun, tmp_path: Path) -> tuple[list[str], list[str], list[str]]:
    """What ``run.collect`` brings back (something must): the manifest's file paths, its
    deletions and the archive's member names, each sorted."""
    packed, names = await collected(run, tmp_path)
    assert packed is not None
    return sorted(e["path"] for e in packed.files), sorted(packed.deleted), sorted(names)


@pytest_twisted.ensureDeferred
async def test_a_new_mapped_path_is_collected_from_its_tar_without_the_change_list(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    """New, edited and deleted files and the outputs file are found with no change list."""
    run = await finished_task(
        docker_engine, busybox_image, "/work/src",
        "cd /work/src && echo new > new.txt && echo edited > edit.txt && rm gone.txt"
        " && mkdir d && echo x > d/x && echo answer=42 >> $FARM_OUTPUTS",
        {"same.txt": b"same\n", "edit.txt": b"before\n", "gone.txt": b"gone\n"},
    )
    try:
        files = ["in/d", "in/d/x", "in/edit.txt", "in/new.txt"]
        assert await brought_back(run, tmp_path) == (files, ["in/gone.txt"], files)
        assert await run.read_outputs() == {"answer": "42"}
        assert run.changes is None, "the engine's change list was asked for"
    finally:
        await run.remove()


@pytest_twisted.ensureDeferred
async def test_a_mapped_path_the_image_has_is_collected_from_the_change_list(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    """The image's own files under the mapped path (/etc) stay behind: only the task's
    changes come back."""
    run = await finished_task(
        docker_engine, busybox_image, "/etc", "echo new > /etc/new.txt && rm /etc/gone.txt",
        {"mine.txt": b"mine\n", "gone.txt": b"gone\n"},
    )
    try:
        assert await brought_back(run, tmp_path) == (["in/new.txt"], ["in/gone.txt"],
                                                     ["in/new.txt"])
        assert not run.scopes_are_new
        assert run.changes is not None
        assert await run.read_outputs() == {}
    finally:
        await run.remove()


@pytest_twisted.ensureDeferred
async def test_a_removed_mapped_directory_deletes_its_inputs(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    """The engine has no tar of a directory the task removed: its inputs are all deleted."""
    run = await finished_task(docker_engine, busybox_image, "/work/src", "rm -rf /work/src",
                              {"a.txt": b"a", "b.txt": b"b"})
    try:
        assert await brought_back(run, tmp_path) == ([], ["in/a.txt", "in/b.txt"], [])
        assert run.changes is None
    finally:
        await run.remove()


@pytest_twisted.ensureDeferred
async def test_outputs_patterns_read_back_only_their_place(
    docker_engine: DockerEngine, busybox_image: str, tmp_path: Path
) -> None:
    """With outputs patterns only their place is read; a place the task never made is
    nothing; inputs beyond READ_BACK_LIMIT under a broad pattern take the change list."""
    script = "cd /work/src && mkdir out && echo a > out/a.o && echo b > b.o"
    run = await finished_task(docker_engine, busybox_image, "/work/src", script,
                              {"in.txt": b"in\n"}, outputs=["/work/src/out/**"])
    try:
        files = ["in/out", "in/out/a.o"]
        assert await brought_back(run, tmp_path) == (files, [], files)
        assert run.changes is None
    finally:
        await run.remove()
    run = await finished_task(docker_engine, busybox_image, "/work/src", "true",
                              {"in.txt": b"in\n"}, outputs=["/work/src/never/**"])
    try:
        assert await collected(run, tmp_path) == (None, [])
        assert run.changes is None
    finally:
        await run.remove()
    big = {"big.bin": os.urandom(READ_BACK_LIMIT + 1)}
    run = await finished_task(docker_engine, busybox_image, "/work/src", script, big,
                              outputs=["/work/src/**/*.o"])
    try:
        files = ["in/b.o", "in/out/a.o"]
        assert await brought_back(run, tmp_path) == (files, [], files)
        assert run.changes is not None, "8 MiB of inputs were read back instead of listed"
    finally:
        await run.remove()


def test_both_engine_clients_tell_a_missing_path_from_a_missing_container(
    docker_engine: DockerEngine, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    """A path the container lacks is an empty tar when allowed, an error when not; a
    container that is gone is an error either way (the engine says 404 for both)."""
    socket = DockerSocket(str(docker_engine.socket_path))
    cid = docker_client.api.create_container(busybox_image, ["true"])["Id"]
    try:
        assert socket.exists(cid, "/etc")
        assert not socket.exists(cid, "/nowhere")
        assert engine_calls.thd_all_absent(docker_client, cid, ["/nowhere", "/nor/here"])
        assert not engine_calls.thd_all_absent(docker_client, cid, ["/nowhere", "/etc"])
        assert list(socket.get_archive(cid, "/nowhere", missing_ok=True)) == []
        assert engine_calls.thd_get_archive(docker_client, cid, "/nowhere", list, True) == []
        with pytest.raises(EngineRefused, match="404"):
            list(socket.get_archive(cid, "/nowhere"))
        with pytest.raises(engine_calls.EngineError):
            engine_calls.thd_get_archive(docker_client, cid, "/nowhere", list)
    finally:
        docker_client.api.remove_container(cid, force=True)
    with pytest.raises(EngineRefused, match="No such container"):
        list(socket.get_archive(cid, "/etc", missing_ok=True))
    with pytest.raises(engine_calls.EngineError, match="No such container"):
        engine_calls.thd_get_archive(docker_client, cid, "/etc", list, True)
