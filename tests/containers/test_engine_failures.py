"""The engine dying under a running task, and leftovers reaped after a master crash."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from buildbot_farm.containers import reap_leftovers
from buildbot_farm.containers._engine import ContainerConfig, Engine, EngineError
from buildbot_farm.containers._run import TaskRun, labels_for
from buildbot_farm.remote.task_paths import InputMap, OutputFilter
from tests.harness.docker_engine import DockerEngine
from tests.harness.images import ensure_busybox_image
from tests.harness.twisted_reactor import reactor

pytestmark = pytest.mark.docker


def busybox_task(engine: Engine, image: str, master: str, command: list[str]) -> TaskRun:
    """A TaskRun of ``command`` in ``image`` on ``engine``: no inputs, labelled as build 1, step 1
    of ``master``, at most 64 pids."""
    inputs = InputMap.parse({}, "/work")
    config = ContainerConfig(
        TaskRun.unique_name("test"), image, command, {}, "/work",
        labels_for(master, build=1, step=1), None, {"pids_limit": 64},
    )
    return TaskRun(engine, config, inputs, OutputFilter(None, inputs))


@pytest_twisted.ensureDeferred
async def test_engine_stopped_mid_task_fails_clearly_and_is_reaped(tmp_path: Path) -> None:
    """Stopping the engine under a running task fails it with a clear error; reaping cleans up."""
    private = DockerEngine(Path(tempfile.mkdtemp(prefix="farm-dockerd-", dir="/tmp")))
    try:
        await threads.deferToThread(private.ensure)
        client = private.client()
        image = await threads.deferToThread(ensure_busybox_image, client)
        url = f"unix://{private.socket_path}"
        engine = await Engine.connect(reactor, url)
        run = busybox_task(engine, image, "crashing-master", ["sh", "-c", "echo up; sleep 60"])
        await run.create([])
        started: defer.Deferred[None] = defer.Deferred()

        def output(stream: int, data: bytes) -> None:
            if not started.called:
                started.callback(None)

        running = defer.ensureDeferred(run.run(output, None))
        await started
        await threads.deferToThread(private.stop)
        with pytest.raises(EngineError) as raised:
            await running
        assert "cannot reach the Docker engine" in str(raised.value) or "said" in str(
            raised.value
        )
        with pytest.raises(EngineError, match="check that it runs"):
            await run.remove()

        await threads.deferToThread(private.ensure)
        client = private.client()
        assert len(client.containers.list(all=True)) == 1
        removed = await reap_leftovers(reactor, "crashing-master", [url])
        assert removed == 1
        assert client.containers.list(all=True) == []
        client.close()
    finally:
        await threads.deferToThread(private.stop)
        shutil.rmtree(private.state_dir or "", ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_unreachable_engine_is_skipped_when_reaping(tmp_path: Path) -> None:
    """Reaping an engine that does not answer logs and goes on: the master still starts."""
    removed = await reap_leftovers(reactor, "m", [f"unix://{tmp_path}/no.sock"])
    assert removed == 0
