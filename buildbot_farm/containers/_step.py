"""``steps.ContainerTask``: run a command in a fresh container and bring back what it changed."""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import posixpath
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from buildbot import config
from buildbot.process import buildstep, remotecommand, remotetransfer
from buildbot.process.results import CANCELLED, FAILURE, SUCCESS
from twisted.internet import defer
from twisted.python import log

from buildbot_farm.artifacts.steps import NoRepository, find_repository, publish_files
from buildbot_farm.config_checks import STEP_ARGUMENTS, checked_keywords
from buildbot_farm.containers._engine import STDERR, ContainerConfig, Engine, EngineError
from buildbot_farm.containers._on_worker import WorkerEngineTask
from buildbot_farm.containers._pipe import ChunkPipe, PipeBroken
from buildbot_farm.containers._run import TaskRun, labels_for
from buildbot_farm.containers._spec import DEFAULT_WORKDIR, SPEC_ARGUMENTS, TaskSpec
from buildbot_farm.containers._transfer import PipeWriter, owned_by_root
from buildbot_farm.private_dirs import remote_archive
from buildbot_farm.remote.pyz import ARCHIVE_NAME
from buildbot_farm.remote.task_changes import Packed, UnsafeOutputs
from buildbot_farm.remote.task_inputs import InputChanged, file_as_tar
from buildbot_farm.remote.task_outputs import OutputsError
from buildbot_farm.remote.task_paths import OUTPUTS_FILE
from buildbot_farm.thread_pool import in_thread

BLOCKSIZE = 512 * 1024


class TaskFailed(Exception):
    """The task cannot go on; the message is for the person reading the step log."""


@checked_keywords("steps.ContainerTask", also=STEP_ARGUMENTS)
class ContainerTask(buildstep.BuildStep):
    """Run ``command`` in a fresh container made from ``image``; bring back what it changed.

    ``inputs`` maps paths in the build directory to container paths (default: the whole build
    directory to ``workdir``); ``outputs`` are glob patterns of container paths that come back
    (default: everything changed under the mapped paths). The container has no network (or,
    with ``network``, its own internal one), no capabilities, ``resources`` limits, and is
    removed at the end whatever happens. ``KEY=VALUE`` lines the task writes to the file
    ``$FARM_OUTPUTS`` become build properties. With ``engine="worker"`` the task runs on
    the Docker engine of the worker's host, and only its log and manifest reach the master.
    See docs/container-tasks.md.
    """

    name = "container-task"

    def __init__(
        self,
        image: Any = None,
        command: Any = None,
        inputs: Any = None,
        outputs: Any = None,
        env: Any = None,
        workdir: Any = DEFAULT_WORKDIR,
        timeout: Any = None,
        network: Any = None,
        resources: Any = None,
        docker_host: Any = None,
        engine: Any = "master",
        pull: Any = False,
        worker_python: Any = "python3",
        **kwargs: Any,
    ) -> None:
        self.spec = TaskSpec(
            image=image, command=command, inputs=inputs, outputs=outputs, env=env or {},
            workdir=workdir, timeout=timeout, network=network, resources=resources or {},
            docker_host=docker_host, engine=engine, pull=pull, worker_python=worker_python,
        )
        for problem in self.spec.problems():
            config.error(f"ContainerTask: {problem}")
        kwargs.setdefault("haltOnFailure", True)
        kwargs.setdefault("flunkOnFailure", True)
        super().__init__(**kwargs)
        self._run: TaskRun | None = None
        self.stdio_log: Any = None
        self._decoders = {
            stream: codecs.getincrementaldecoder("utf-8")("replace") for stream in (1, 2)
        }

    def run(self) -> defer.Deferred[int]:
        """Run the task (Buildbot calls this once per build)."""
        return defer.ensureDeferred(self._run_task())

    def interrupt(self, reason: Any) -> defer.Deferred[None]:
        """Stop the task: the container is killed, and removed as always."""
        d = super().interrupt(reason)
        if self._run is not None:
            self._run.kill()
        return d

    async def _run_task(self) -> int:
        self.stdio_log = await self.addLog("stdio")
        try:
            rendered = await self.build.render({n: getattr(self.spec, n) for n in SPEC_ARGUMENTS})
            spec = TaskSpec(**rendered)
            problems = spec.problems()
            if problems:
                raise TaskFailed(
                    "the rendered arguments are not usable:\n  " + "\n  ".join(problems)
                )
            if spec.engine == "worker":
                return await WorkerEngineTask(self, spec).run()
            engine = await Engine.connect(self.master.reactor, spec.docker_host)
        except (TaskFailed, EngineError) as error:
            await self.say_error(str(error))
            return FAILURE
        try:
            return await self._with_engine(spec, engine)
        finally:
            await in_thread(self.master.reactor, engine.client.close)

    async def _with_engine(self, spec: TaskSpec, engine: Engine) -> int:
        inputs = spec.input_map()
        build_id = self.build.buildid
        labels = labels_for(self.master.name, build=build_id, step=self.stepid,
                            builder=self.build.builder.name)
        name = TaskRun.unique_name(build_id, self.stepid)
        network = f"{name}-{spec.network}" if spec.network else None
        env = {**spec.env, "FARM_OUTPUTS": OUTPUTS_FILE}
        run = self._run = TaskRun(
            engine,
            ContainerConfig(name, spec.image, spec.command_list(), env, spec.workdir, labels,
                            network, spec.host_limits()),
            inputs,
            spec.output_filter(),
            network,
        )
        try:
            stats = await self._stat_inputs(inputs.pairs)
            kinds = {w: "dir" if stat.S_ISDIR(info[stat.ST_MODE]) else "file"
                     for w, info in stats.items()}
            await self.add_header(f"creating container {name} from {spec.image} on {engine.url}"
                               f" (network: {network or 'none'})")
            directories = [
                c if kinds[w] == "dir" else posixpath.dirname(c) for w, c in inputs.pairs
            ]
            await run.create(directories, pull=spec.pull)
            await self._copy_inputs(run, inputs.pairs, stats)
            self._check_stopped()
            await self.add_header(f"running {spec.command_list()} in {spec.workdir}")
            outcome = await run.run(self._output, spec.timeout)
            self._flush_output()
            if outcome.timed_out:
                self.timed_out = True
                await self.say_error(f"timed out after {spec.timeout:g} s; the task was killed")
                return FAILURE
            self._check_stopped()
            await self.add_header(f"the task exited with status {outcome.status}")
            await self._bring_back(run, spec)
            await self._set_properties(run)
            self.descriptionDone = [f"exit {outcome.status}"]
            return SUCCESS if outcome.status == 0 else FAILURE
        except buildstep.BuildStepCancelled:
            return CANCELLED
        except (TaskFailed, EngineError, UnsafeOutputs, OutputsError, InputChanged) as error:
            if self.stopped:
                return CANCELLED
            await self.say_error(str(error))
            return FAILURE
        finally:
            await self._remove(run)

    def _check_stopped(self) -> None:
        if self.stopped:
            raise buildstep.BuildStepCancelled()

    async def _stat_inputs(self, pairs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
        """Each input's stat tuple from the worker; TaskFailed unless a file or directory."""
        found = {}
        for worker_path, _ in pairs:
            cmd = remotecommand.RemoteCommand(
                "stat", {"file": worker_path, "workdir": self.workdir, "logEnviron": False}
            )
            await self.runCommand(cmd)
            if cmd.didFail() and worker_path == ".":
                await self.runCommand(remotecommand.RemoteCommand(
                    "mkdir", {"dir": self.workdir, "logEnviron": False}))
                cmd = remotecommand.RemoteCommand(
                    "stat", {"file": worker_path, "workdir": self.workdir, "logEnviron": False}
                )
                await self.runCommand(cmd)
            self._check_stopped()
            if cmd.didFail():
                raise TaskFailed(f"the input {worker_path!r} does not exist in the build"
                                 f" directory {self.workdir!r} on the worker")
            info = cmd.updates["stat"][-1]
            if not (stat.S_ISDIR(info[stat.ST_MODE]) or stat.S_ISREG(info[stat.ST_MODE])):
                raise TaskFailed(f"the input {worker_path!r} is neither a file nor a directory")
            found[worker_path] = info
        return found

    async def _copy_inputs(
        self, run: TaskRun, pairs: tuple[tuple[str, str], ...], stats: dict[str, Any]
    ) -> None:
        for worker_path, container in pairs:
            pipe = ChunkPipe(self.master.reactor)
            writer = PipeWriter(pipe)
            args: dict[str, Any] = {
                "workdir": self.workdir, "workersrc": worker_path, "writer": writer,
                "maxsize": None, "blocksize": BLOCKSIZE,
            }
            info = stats[worker_path]
            if stat.S_ISDIR(info[stat.ST_MODE]):
                args["compress"] = None
                cmd = remotecommand.RemoteCommand("uploadDirectory", args)
                put = defer.ensureDeferred(run.copy_in(container, owned_by_root(_reading(pipe))))
            else:
                args["keepstamp"] = False
                cmd = remotecommand.RemoteCommand("uploadFile", args)
                chunks = file_as_tar(posixpath.basename(container), info[stat.ST_SIZE],
                                     stat.S_IMODE(info[stat.ST_MODE]), info[stat.ST_MTIME],
                                     _reading(pipe))
                put = defer.ensureDeferred(
                    run.copy_in(posixpath.dirname(container), chunks)
                )
            put.addErrback(_breaking, pipe)
            try:
                await self.runCommand(cmd)
            finally:
                if cmd.rc != 0 or self.stopped:
                    pipe.fail(f"the worker could not send {worker_path!r}")
                else:
                    pipe.close()
            try:
                await put
            except PipeBroken as error:
                if self.stopped:
                    raise buildstep.BuildStepCancelled() from error
                raise TaskFailed(f"copying {worker_path!r} from the worker failed: {error};"
                                 f" {cmd.updates.get('stderr', [''])[-1]}") from error
            await self.add_header(
                f"copied {worker_path!r} from the worker to {container}"
                f" ({pipe.bytes_written} bytes of tar)"
            )

    def _output(self, stream: int, data: bytes) -> None:
        text = self._decoders[stream].decode(data)
        if text and self.stdio_log is not None:
            (self.stdio_log.addStderr if stream == STDERR else self.stdio_log.addStdout)(text)

    def _flush_output(self) -> None:
        for stream, decoder in self._decoders.items():
            rest = decoder.decode(b"", final=True)
            if rest:
                (self.stdio_log.addStderr if stream == STDERR else self.stdio_log.addStdout)(rest)

    async def _bring_back(self, run: TaskRun, spec: TaskSpec) -> None:
        fd, archive_path = tempfile.mkstemp(prefix="farm-task-", suffix=".tar.zst")
        try:
            with os.fdopen(fd, "wb") as archive:
                packed = await run.collect(archive)
            if packed is None:
                await self.add_header("the task changed nothing under the mapped paths")
                return
            await self.add_header(
                f"bringing back {len(packed.files)} entries ({packed.data_bytes} bytes) and"
                f" {len(packed.deleted)} deletions ({os.path.getsize(archive_path)} bytes zstd)"
            )
            manifest = json.dumps(packed.manifest(), indent=1)
            await self.addCompleteLog("manifest.json", manifest)
            await self._unpack_on_worker(packed, archive_path, spec.worker_python)
            await self._keep_as_artifacts(archive_path, manifest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(archive_path)

    async def _keep_as_artifacts(self, archive_path: str, manifest: str) -> None:
        """With an artifact repository, keep the archive and its manifest there too."""
        try:
            repository = find_repository(self.master)
        except NoRepository:
            return
        prefix = repository.build_prefix("container", self.build.builder.name, self.build.number)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", self.name).strip("-.") or "task"
        fd, manifest_path = tempfile.mkstemp(prefix="farm-task-", suffix=".json")
        with os.fdopen(fd, "w") as staged:
            staged.write(manifest)
        try:
            placed = [
                (Path(archive_path), (*prefix, f"{stem}.tar.zst")),
                (Path(manifest_path), (*prefix, f"{stem}.manifest.json")),
            ]
            published = await publish_files(
                self, self.stdio_log, repository, prefix, placed, byproduct=True
            )
            if published != SUCCESS:
                raise TaskFailed("keeping the task's archive in the artifact repository failed")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(manifest_path)

    async def _unpack_on_worker(self, packed: Packed, archive_path: str, python: str) -> None:
        tmpdir = f".farm-task-{self.stepid}"
        dest = self.workdir if posixpath.isabs(self.workdir) else posixpath.join("..", self.workdir)
        try:
            remote = await self.remote_archive_bytes()
            await self.download_to_worker(tmpdir, ARCHIVE_NAME, remote)
            await self.download_to_worker(tmpdir, "manifest.json",
                                          json.dumps(packed.manifest()).encode())
            with open(archive_path, "rb") as archive:
                await self.download_to_worker(tmpdir, "changes.tar.zst", archive)
            cmd = remotecommand.RemoteShellCommand(
                tmpdir, [python, ARCHIVE_NAME, "unpack", "changes.tar.zst", "manifest.json",
                         dest],
                logEnviron=False, timeout=None,
            )
            cmd.useLog(self.stdio_log, False)
            await self.runCommand(cmd)
            self._check_stopped()
            if cmd.didFail():
                raise TaskFailed("the worker refused or failed to apply the task's changes;"
                                 " see the lines above")
        finally:
            if not self.stopped:
                await self.runCommand(remotecommand.RemoteCommand(
                    "rmdir", {"dir": tmpdir, "logEnviron": False}))

    async def remote_archive_bytes(self) -> bytes:
        """farm-remote.pyz, the farm's programs for the worker."""
        return await in_thread(self.master.reactor, _remote_archive_bytes)

    async def download_to_worker(self, tmpdir: str, name: str, source: Any) -> None:
        """Send ``source`` (bytes or an open file) to ``tmpdir/name`` on the worker."""
        reader = (remotetransfer.StringFileReader(source) if isinstance(source, bytes)
                  else remotetransfer.FileReader(source))
        cmd = remotecommand.RemoteCommand("downloadFile", {
            "workdir": tmpdir, "workerdest": name, "reader": reader, "maxsize": None,
            "blocksize": BLOCKSIZE, "mode": None,
        })
        await self.runCommand(cmd)
        self._check_stopped()
        if cmd.didFail():
            raise TaskFailed(f"could not send {name} to the worker")

    async def _set_properties(self, run: TaskRun) -> None:
        await self.set_task_properties(await run.read_outputs())

    async def set_task_properties(self, found: dict[str, str]) -> None:
        """Set the properties the task wrote to ``$FARM_OUTPUTS``, and say which."""
        for key, value in found.items():
            self.setProperty(key, value, "ContainerTask")
        if found:
            await self.add_header(f"set properties from $FARM_OUTPUTS: {', '.join(sorted(found))}")

    async def _remove(self, run: TaskRun) -> None:
        self._run = None
        try:
            await run.remove()
        except EngineError as error:
            log.msg(f"farm: container task cleanup failed: {error}")
            if self.stdio_log is not None:
                await self.stdio_log.addStderr(
                    f"could not remove {run.config.name}: {error}\nThe farm service removes"
                    " such leftovers (labelled with this master's name) when it next starts.\n"
                )

    async def add_header(self, text: str) -> None:
        """A line of the step's own in the log."""
        await self.stdio_log.addHeader(text + "\n")

    async def say_error(self, text: str) -> None:
        """Why the step fails, in the log and its description."""
        await self.stdio_log.addStderr(f"ContainerTask: {text}\n")
        self.descriptionDone = ["failed"]


def _breaking(failure: Any, pipe: ChunkPipe) -> Any:
    """Errback: the engine stopped reading, so the worker's writes must fail too."""
    pipe.fail(failure.getErrorMessage())
    return failure


def _reading(pipe: ChunkPipe) -> Any:
    """Iterate ``pipe`` in a pool thread, breaking it for the writer if reading stops."""
    try:
        yield from pipe
    except BaseException as error:
        pipe.reader_failed(str(error) or type(error).__name__)
        raise


def _remote_archive_bytes() -> bytes:
    """farm-remote.pyz, whose ``unpack`` applies the changes on the worker (blocking)."""
    return remote_archive().read_bytes()
