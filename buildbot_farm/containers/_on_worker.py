"""``ContainerTask(engine="worker")``: the task runs on the Docker engine of the worker's host.

The master renders and checks the arguments, writes them as JSON with the container's
create body (the same options as its own path), and sends that and ``farm-remote.pyz`` to a
directory beside the build directory. ``farm-remote.pyz container-task`` does the rest on
the worker (:mod:`buildbot_farm.remote.container_task`): its output is the step's live log,
and only a small result (exit status, manifest, properties) comes back to the master.
"""

from __future__ import annotations

import json
import posixpath
from typing import TYPE_CHECKING, Any

from buildbot.process import remotecommand, remotetransfer
from buildbot.process.results import CANCELLED, FAILURE, SUCCESS

from buildbot_farm.containers._engine import ContainerConfig, create_body
from buildbot_farm.containers._run import TaskRun, labels_for
from buildbot_farm.containers._spec import TaskSpec
from buildbot_farm.remote.pyz import ARCHIVE_NAME
from buildbot_farm.remote.task_paths import OUTPUTS_FILE

if TYPE_CHECKING:
    from buildbot_farm.containers._step import ContainerTask

RESULT_LIMIT = 64 << 20
# How long the worker's program has, after the build is stopped, to kill and remove the
# container before buildbot-worker kills it.
STOP_GRACE = 30


class WorkerEngineTask:
    """One run of ``step`` (a ContainerTask) on its worker's engine."""

    def __init__(self, step: ContainerTask, spec: TaskSpec) -> None:
        self.step = step
        self.spec = spec
        self.tmpdir = f".farm-task-{step.stepid}"

    def task_json(self) -> dict[str, Any]:
        """What ``farm-remote.pyz container-task`` is told: the checked spec, the create body."""
        step, spec = self.step, self.spec
        build_id = step.build.buildid
        name = TaskRun.unique_name(build_id, step.stepid)
        network = f"{name}-{spec.network}" if spec.network else None
        labels = labels_for(step.master.name, build=build_id, step=step.stepid,
                            builder=step.build.builder.name)
        env = {**spec.env, "FARM_OUTPUTS": OUTPUTS_FILE}
        config = ContainerConfig(name, spec.image, spec.command_list(), env, spec.workdir,
                                 labels, network, spec.host_limits())
        workdir = step.workdir
        return {
            "engine": spec.docker_host, "name": name, "image": spec.image,
            "create": create_body(config), "network": network,
            "inputs": [list(pair) for pair in spec.input_map().pairs],
            "outputs": spec.output_filter().patterns if spec.outputs is not None else None,
            "workdir": spec.workdir, "timeout": spec.timeout, "pull": spec.pull,
            "build_dir": workdir if posixpath.isabs(workdir) else posixpath.join("..", workdir),
        }

    async def run(self) -> int:
        """Send the program and the spec, run it with its output in the log, read its result."""
        step = self.step
        try:
            remote = await step.remote_archive_bytes()
            await step.download_to_worker(self.tmpdir, ARCHIVE_NAME, remote)
            await step.download_to_worker(self.tmpdir, "task.json",
                                          json.dumps(self.task_json()).encode())
            cmd = remotecommand.RemoteShellCommand(
                self.tmpdir,
                [self.spec.worker_python, ARCHIVE_NAME, "container-task", "task.json",
                 "result.json"],
                logEnviron=False, timeout=None, sigtermTime=STOP_GRACE,
            )
            cmd.useLog(step.stdio_log, False)
            await step.runCommand(cmd)
            if step.stopped:
                return CANCELLED
            if cmd.didFail():
                await step.say_error(
                    f"the worker could not run the task with {self.spec.worker_python}"
                    f" (exit {cmd.rc}); see the lines above")
                return FAILURE
            result = await self._result()
        finally:
            if not step.stopped:
                await step.runCommand(remotecommand.RemoteCommand(
                    "rmdir", {"dir": self.tmpdir, "logEnviron": False}))
        return await self._report(result)

    async def _result(self) -> dict[str, Any]:
        writer = remotetransfer.StringFileWriter()
        cmd = remotecommand.RemoteCommand("uploadFile", {
            "workdir": self.tmpdir, "workersrc": "result.json", "writer": writer,
            "maxsize": RESULT_LIMIT, "blocksize": 64 * 1024, "keepstamp": False,
        })
        await self.step.runCommand(cmd)
        if cmd.didFail():
            return {"error": "the worker's program ended without saying how the task went;"
                             " see the lines above"}
        try:
            result = json.loads(writer.buffer)
        except ValueError as error:
            return {"error": f"the worker's program wrote an unreadable result ({error})"}
        return dict(result)

    async def _report(self, result: dict[str, Any]) -> int:
        step = self.step
        if result.get("manifest") is not None:
            await step.addCompleteLog("manifest.json", json.dumps(result["manifest"], indent=1))
        if result.get("timed_out"):
            step.timed_out = True
            await step.say_error(f"timed out after {self.spec.timeout:g} s; the task was killed")
            return FAILURE
        if result.get("error"):
            await step.say_error(str(result["error"]))
            return FAILURE
        await step.set_task_properties(result.get("properties") or {})
        status = int(result["status"])
        step.descriptionDone = [f"exit {status}"]
        return SUCCESS if status == 0 else FAILURE
