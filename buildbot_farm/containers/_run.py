"""One container task on one engine, from creation to removal (no Buildbot here).

The step drives it; the benchmarks drive it directly. Outputs and logs go to callbacks.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

import zstandard
from twisted.internet import defer
from twisted.python import log

from buildbot_farm.containers import _engine as engine_calls
from buildbot_farm.containers._engine import ContainerConfig, Engine
from buildbot_farm.remote.task_changes import (
    InputRecord,
    Packed,
    Packer,
    Plan,
    consume_into,
    plan_collection,
    plan_from_tars,
)
from buildbot_farm.remote.task_inputs import control_tar
from buildbot_farm.remote.task_outputs import first_member_data, parse_outputs
from buildbot_farm.remote.task_paths import OUTPUTS_FILE, InputMap, OutputFilter
from buildbot_farm.thread_pool import in_thread

# zstd's fastest regular level: it passes over data that does not compress (already
# compressed outputs, the random-looking parts of binaries) far faster than level 3, with
# which collecting 5,000 such files (100 MiB) took about a third longer; on compressible
# outputs (a tree of Python packages and shared libraries) it costs 37% less CPU for 14%
# more bytes (ratio 3.15 vs 3.58), and the master's CPU serves every build at once.
ZSTD_LEVEL = 1
# In the thread that packs, without zstd's worker threads: one thread compresses a tree of
# Python packages at 383 MiB/s here (worker threads on both cores: 668 MiB/s), faster than
# the engine sends a container's files (200-250 MiB/s), and the worker threads only compete
# with the engine and the packing for the cores: collecting 5,000 incompressible files
# (100 MiB, on tmpfs) took a median of 559 ms without them against 645 ms with them.
ZSTD_THREADS = 0


class State(enum.Enum):
    """Where a TaskRun is.

    NEW -> CREATED (``create``) -> RUNNING (``run``) -> EXITED (the task ended or was killed)
    -> REMOVED (``remove``). ``remove`` is allowed from every state and always ends in REMOVED.
    """

    NEW = "new"
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    REMOVED = "removed"


@dataclass
class Outcome:
    """How the task ended: its exit status and whether it ran out of time."""

    status: int
    timed_out: bool = False


class TaskRun:
    """A container made for one task: copy in, run with live output, collect, remove."""

    def __init__(
        self,
        engine: Engine,
        config: ContainerConfig,
        inputs: InputMap,
        accept: OutputFilter,
        network: str | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.inputs = inputs
        self.accept = accept
        self.network_name = network
        self.record = InputRecord()
        self.state = State.NEW
        self.container_id: str | None = None
        self.network_id: str | None = None
        self.changes: list[tuple[str, int]] | None = None  # the engine's list, once asked
        self.scopes_are_new = False  # the image had none of the mapped paths
        self._killing: defer.Deferred[None] | None = None
        self._timed_out = False

    @staticmethod
    def unique_name(*parts: object) -> str:
        """A container name from ``parts`` and a random suffix."""
        return "-".join(["farm", *map(str, parts), secrets.token_hex(3)])

    async def create(self, directories: Iterable[str], pull: bool = False) -> None:
        """Create the network (if any) and the container, with ``directories`` made in it.

        With ``pull`` a missing image is pulled from its registry; without, it is an error.
        """
        if self.network_name is not None:
            self.network_id = await self.engine.call(
                engine_calls.thd_create_network, self.network_name, self.config.labels
            )
        self.container_id = await self.engine.call(engine_calls.thd_create, self.config, pull)
        self.state = State.CREATED
        self.scopes_are_new = await self.engine.call(
            engine_calls.thd_all_absent, self.container_id, self.inputs.container_roots
        )
        await self.copy_in("/", [control_tar(directories)], record=False)

    async def copy_in(self, dest: str, chunks: Iterable[bytes], record: bool = True) -> None:
        """Stream the tar ``chunks`` into the container at ``dest`` (read in a pool thread)."""
        assert self.container_id is not None
        now = self.engine.reactor.seconds()
        stream = self.record.tap(chunks, dest, now) if record else chunks
        await self.engine.call(engine_calls.thd_put_archive, self.container_id, dest, stream)

    async def run(self, output: Callable[[int, bytes], None], timeout: float | None) -> Outcome:
        """Start the task, pass its output to ``output`` as it comes, wait for it to end.

        ``output(stream, data)`` runs in the reactor thread. After ``timeout`` seconds the
        task is killed.
        """
        assert self.container_id is not None
        reactor = self.engine.reactor
        self.state = State.RUNNING

        def from_thread(stream: int, data: bytes) -> None:
            reactor.callFromThread(output, stream, data)

        timer = reactor.callLater(timeout, self._time_out) if timeout else None
        try:
            status = await self.engine.call(engine_calls.thd_run, self.container_id, from_thread)
        finally:
            if timer is not None and timer.active():
                timer.cancel()
            self.state = State.EXITED
        if self._killing is not None:
            await self._killing
        return Outcome(status, self._timed_out)

    def kill(self) -> defer.Deferred[None]:
        """Kill the task if it runs; the Deferred fires once the engine has done it."""
        if self.state is not State.RUNNING or self.container_id is None:
            return defer.succeed(None)
        if self._killing is None:
            self._killing = defer.ensureDeferred(
                self.engine.call(engine_calls.thd_kill, self.container_id)
            )
            self._killing.addErrback(log.err, "farm: could not kill a container task")
        return self._killing

    def _time_out(self) -> None:
        self._timed_out = True
        self.kill()

    async def collect(self, archive: IO[bytes]) -> Packed | None:
        """Write the task's changes (as filtered) into ``archive``; None when there are none.

        Asks the engine for its change list only where the tars of the mapped paths cannot
        tell (see :func:`~buildbot_farm.remote.task_changes.plan_from_tars`). Raises
        UnsafeOutputs if a member is refused.
        """
        assert self.container_id is not None
        plan = plan_from_tars(self.record, self.inputs, self.accept, self.scopes_are_new)
        if plan is None:
            plan = plan_collection(await self._change_list(), self.record, self.inputs,
                                   self.accept)
        if not plan.roots and not plan.deleted:
            return None
        packed = await self._pack(archive, plan)
        return packed if packed.files or packed.deleted else None

    async def _pack(self, archive: IO[bytes], plan: Plan) -> Packed:
        assert self.container_id is not None
        compressed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=ZSTD_THREADS).stream_writer(
            archive, closefd=False
        )
        try:
            packer = Packer(compressed, plan, self.record, self.inputs)
            for root in plan.roots:
                await self.engine.call(
                    engine_calls.thd_get_archive, self.container_id, root,
                    consume_into(packer, root), plan.from_tars,
                )
            packed: Packed = await in_thread(self.engine.reactor, packer.close)
        finally:
            await in_thread(self.engine.reactor, _end_frame, compressed)
        return packed

    async def _change_list(self) -> list[tuple[str, int]]:
        """The engine's change list of the container, asked for once."""
        assert self.container_id is not None
        if self.changes is None:
            self.changes = await self.engine.call(engine_calls.thd_changes, self.container_id)
        return self.changes

    async def read_outputs(self) -> dict[str, str]:
        """The properties the task wrote to ``$FARM_OUTPUTS`` (empty if it wrote none)."""
        assert self.container_id is not None
        if self.changes is not None and not any(
                path == OUTPUTS_FILE for path, kind in self.changes if kind != 2):
            return {}
        data: bytes = await self.engine.call(
            engine_calls.thd_get_archive, self.container_id, OUTPUTS_FILE, first_member_data,
            True,
        )
        return parse_outputs(data)

    async def remove(self) -> None:
        """Remove the container and the network; raises EngineError if the engine fails."""
        if self.state is State.REMOVED:
            return
        if self.container_id is not None or self.network_id is not None:
            await self.engine.call(engine_calls.thd_remove, self.container_id, self.network_id)
        self.state = State.REMOVED


def _end_frame(compressed: Any) -> None:
    """Finish the zstd frame and let go of the writer (the archive file stays open)."""
    compressed.flush(zstandard.FLUSH_FRAME)
    compressed.close()


def labels_for(master: str, **more: Any) -> dict[str, str]:
    """The labels of a task's container and network: the master, plus ``more``."""
    labels = {engine_calls.LABEL_MASTER: master}
    labels.update({engine_calls.LABEL_PREFIX + k: str(v) for k, v in more.items()})
    return labels
