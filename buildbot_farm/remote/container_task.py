"""A container task on the worker's own engine: ``farm-remote.pyz container-task SPEC RESULT``.

``ContainerTask(engine="worker")`` sends this archive and ``SPEC`` (JSON written by the
master) into a directory beside the build directory and runs this command there. It talks to
the engine on this host over its unix socket (:mod:`~.docker_socket`): creates the container
as the master's path does, copies the inputs in from the build directory, streams the
task's output to stdout and stderr (the step's live log), and brings the changes back with
the checks the master's path uses (:mod:`~.task_changes`, then :func:`~.unpack.apply`):
nothing is written unless everything passes. Inputs and outputs never leave this host.

``RESULT`` (JSON) says how it went: ``status``, ``timed_out``, ``error`` (a message for the
step log), ``manifest`` and ``properties``. The exit status is 0 whenever ``RESULT`` was
written. SIGTERM (the build was stopped) kills and removes the container.
"""

from __future__ import annotations

import json
import os
import posixpath
import signal
import stat
import sys
import tarfile
import threading
import time
import traceback
from typing import IO, Any

from buildbot_farm.remote.docker_socket import (
    STDERR,
    DockerSocket,
    EngineRefused,
    EngineUnavailable,
    socket_path,
)
from buildbot_farm.remote.paths import UnsafePath
from buildbot_farm.remote.tar_stream import TarError
from buildbot_farm.remote.task_changes import (
    InputRecord,
    Packer,
    Plan,
    UnsafeOutputs,
    plan_collection,
    plan_from_tars,
)
from buildbot_farm.remote.task_inputs import InputChanged, control_tar, path_as_tar
from buildbot_farm.remote.task_outputs import OutputsError, first_member_data, parse_outputs
from buildbot_farm.remote.task_paths import OUTPUTS_FILE, InputMap, OutputFilter, PathProblem
from buildbot_farm.remote.unpack import apply, summary

STAGED = "changes.tar"


class TaskFailed(Exception):
    """The task cannot go on; the message is for the person reading the step log."""


class Stopped(BaseException):
    """SIGTERM arrived: the build was stopped."""


class WorkerTask:
    """One task as the master's ``spec`` describes it, run on this host's engine."""

    def __init__(self, spec: dict[str, Any], out: IO[bytes], err: IO[bytes]) -> None:
        self.spec = spec
        self.out = out
        self.err = err
        self.build_dir = spec["build_dir"]
        self.result: dict[str, Any] = {"status": None, "timed_out": False, "error": None,
                                       "manifest": None, "properties": {}}
        self.engine: DockerSocket | None = None
        self.container: str | None = None
        self.network: str | None = None
        self.timed_out = threading.Event()

    def run(self) -> dict[str, Any]:
        """Do the whole task; always end with the container and network removed."""
        try:
            self._run()
        except (TaskFailed, EngineUnavailable, EngineRefused, UnsafeOutputs, OutputsError,
                InputChanged, PathProblem, UnsafePath, TarError) as error:
            self.result["error"] = str(error)
        except Stopped:
            self.result["error"] = "the build was stopped; the task was killed"
        except Exception as error:  # a bug: say it, and still clean up
            traceback.print_exc()
            self.result["error"] = (f"the worker's container-task program failed:"
                                    f" {type(error).__name__}: {error}")
        finally:
            self._remove()
        return self.result

    def say(self, text: str) -> None:
        """A line of the program's own in the step log."""
        self.out.write(text.encode() + b"\n")
        self.out.flush()

    def _run(self) -> None:
        spec = self.spec
        try:
            self.engine = engine = DockerSocket(socket_path(spec["engine"]))
        except ValueError as error:
            raise TaskFailed(f"docker_host: {error}") from error
        inputs = InputMap.parse(dict(spec["inputs"]), spec["workdir"])
        accept = OutputFilter(spec["outputs"], inputs)
        kinds = self._input_kinds(inputs)
        self._check_engine(engine)
        self.say(f"creating container {spec['name']} from {spec['image']} on {engine.url}"
                 f" (network: {spec['network'] or 'none'})")
        self._create(engine)
        cid = self.container
        assert cid is not None
        directories = [c if kinds[w] == "dir" else posixpath.dirname(c) for w, c in inputs.pairs]
        scopes_are_new = not any(engine.exists(cid, c) for c in inputs.container_roots)
        engine.put_archive(cid, "/", [control_tar(directories)])
        record = InputRecord()
        for worker, container in inputs.pairs:
            dest = container if kinds[worker] == "dir" else posixpath.dirname(container)
            counted = _Counted(path_as_tar(os.path.join(self.build_dir, worker),
                                           posixpath.basename(container)))
            engine.put_archive(cid, dest, record.tap(counted, dest, time.time()))
            self.say(f"copied {worker!r} from the worker to {container}"
                     f" ({counted.size} bytes of tar)")
        self.say(f"running {spec['create']['Cmd']} in {spec['workdir']}")
        status = self._wait_for_exit(engine, cid, spec["timeout"])
        if self.timed_out.is_set():
            self.result["timed_out"] = True
            return
        self.result["status"] = status
        self.say(f"the task exited with status {status}")
        plan = plan_from_tars(record, inputs, accept, scopes_are_new)
        changes = None
        if plan is None:
            changes = [(c["Path"], int(c["Kind"])) for c in
                       engine.call("listing the files the task changed", "GET",
                                   f"/containers/{cid}/changes") or []]
            plan = plan_collection(changes, record, inputs, accept)
        try:
            manifest = self._pack(engine, cid, plan, record, inputs)
            outputs = None
            if changes is None or any(path == OUTPUTS_FILE for path, kind in changes if kind != 2):
                outputs = first_member_data(engine.get_archive(cid, OUTPUTS_FILE, True))
            # The engine removes the container while the changes are written here.
            removing = threading.Thread(target=self._remove, daemon=True)
            removing.start()
            try:
                if manifest is not None:
                    self._apply(manifest)
            finally:
                removing.join()
        finally:
            if os.path.exists(STAGED):
                os.unlink(STAGED)
        if outputs is not None:
            self.result["properties"] = parse_outputs(outputs)

    def _input_kinds(self, inputs: InputMap) -> dict[str, str]:
        kinds = {}
        for worker, _ in inputs.pairs:
            full = os.path.join(self.build_dir, worker)
            if worker == "." and not os.path.exists(full):
                os.makedirs(full)
            try:
                mode = os.stat(full).st_mode
            except FileNotFoundError:
                raise TaskFailed(f"the input {worker!r} does not exist in the build directory"
                                 f" {self.build_dir!r} on the worker") from None
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise TaskFailed(f"the input {worker!r} is neither a file nor a directory")
            kinds[worker] = "dir" if stat.S_ISDIR(mode) else "file"
        return kinds

    def _check_engine(self, engine: DockerSocket) -> None:
        try:
            engine.call("asking the engine its version", "GET", "/version")
        except EngineUnavailable as error:
            raise TaskFailed(
                f"no Docker engine answers on this worker at {engine.url} ({error.__cause__}):"
                " start one there, name its socket with docker_host='unix:///...', or run the"
                " task on the master's engine (engine='master')") from error

    def _create(self, engine: DockerSocket) -> None:
        spec = self.spec
        if spec["network"]:
            created = engine.call(f"creating the task's network {spec['network']}", "POST",
                                  "/networks/create", body={
                                      "Name": spec["network"], "Driver": "bridge",
                                      "Internal": True, "Labels": spec["create"]["Labels"]})
            self.network = created["Id"]
        doing = f"creating the container from {spec['image']}"
        try:
            created = engine.call(doing, "POST", "/containers/create",
                                  {"name": spec["name"]}, spec["create"])
        except EngineRefused as error:
            if error.status != 404:
                raise
            if not spec["pull"]:
                raise TaskFailed(
                    f"the image {spec['image']!r} is not on the Docker engine at {engine.url}."
                    " ContainerTask never pulls from a registry unless pull=True: build or load"
                    " the image on that engine, or set pull=True") from error
            self._pull(engine)
            created = engine.call(doing, "POST", "/containers/create",
                                  {"name": spec["name"]}, spec["create"])
        self.container = created["Id"]

    def _pull(self, engine: DockerSocket) -> None:
        image = self.spec["image"]
        self.say(f"pulling {image}")
        progress = b"".join(engine.stream(f"pulling {image}", "POST", "/images/create",
                                          {"fromImage": image}))
        for line in progress.splitlines():
            if line.strip() and "error" in json.loads(line):
                raise TaskFailed(f"pulling {image} failed: {json.loads(line)['error']}")

    def _wait_for_exit(self, engine: DockerSocket, cid: str, timeout: float | None) -> int:
        frames = engine.attach(cid)
        next(frames)
        engine.call("starting the task", "POST", f"/containers/{cid}/start")
        timer = threading.Timer(timeout, self._time_out, (engine, cid)) if timeout else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            for stream, data in frames:
                target = self.err if stream == STDERR else self.out
                target.write(data)
                target.flush()
            answer = engine.call("waiting for the task to end", "POST",
                                 f"/containers/{cid}/wait", timeout=None)
        finally:
            if timer is not None:
                timer.cancel()
        return int(answer["StatusCode"])

    def _time_out(self, engine: DockerSocket, cid: str) -> None:
        self.timed_out.set()
        try:
            engine.call("stopping the task", "POST", f"/containers/{cid}/kill")
        except (EngineRefused, EngineUnavailable) as error:
            self.say(f"could not kill the timed-out task: {error}")

    def _pack(self, engine: DockerSocket, cid: str, plan: Plan, record: InputRecord,
              inputs: InputMap) -> dict[str, Any] | None:
        """Pack the changes into STAGED; their manifest, None if there are none."""
        nothing = "the task changed nothing under the mapped paths"
        if not plan.roots and not plan.deleted:
            self.say(nothing)
            return None
        with open(STAGED, "wb") as staged:
            packer = Packer(staged, plan, record, inputs)
            for root in plan.roots:
                try:
                    packer.add_stream(root, engine.get_archive(cid, root, plan.from_tars))
                except TarError as error:
                    raise TaskFailed(f"the Docker engine's archive of {root} cannot be"
                                     f" read ({error}); nothing was written") from error
            try:
                packed = packer.close()
            finally:
                self.result["manifest"] = packer.packed.manifest()
        if not packed.files and not packed.deleted:
            del self.result["manifest"]
            self.say(nothing)
            return None
        self.say(f"bringing back {len(packed.files)} entries ({packed.data_bytes} bytes)"
                 f" and {len(packed.deleted)} deletions")
        return packed.manifest()

    def _apply(self, manifest: dict[str, Any]) -> None:
        """Check, then write the changes in STAGED into the build directory."""
        with open(STAGED, "rb") as staged_tar:
            try:
                count, size = apply(self.build_dir, manifest, staged_tar)
            except (UnsafePath, tarfile.TarError) as error:
                raise TaskFailed(f"refused: {error}") from error
        self.say(summary(count, size, manifest, self.build_dir))

    def _remove(self) -> None:
        """Remove the container and the network, once (later calls do nothing)."""
        engine = self.engine
        container, network = self.container, self.network
        self.container = self.network = None
        if engine is None:
            return
        try:
            if container is not None:
                engine.call("removing the task's container", "DELETE",
                            f"/containers/{container}", {"force": 1, "v": 1})
            if network is not None:
                engine.call("removing the task's network", "DELETE", f"/networks/{network}")
        except EngineRefused as error:
            if error.status != 404:
                self.say(f"could not remove {self.spec['name']}: {error}")
        except EngineUnavailable as error:
            self.say(f"could not remove {self.spec['name']}: {error}")


class _Counted:
    """Chunks passed through, counting their bytes."""

    def __init__(self, chunks: Any) -> None:
        self.chunks = chunks
        self.size = 0

    def __iter__(self) -> Any:
        for chunk in self.chunks:
            self.size += len(chunk)
            yield chunk


def _stop(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stopped()


def main(argv: list[str]) -> int:
    """Run the task of the SPEC file; write RESULT; 0 if it was written."""
    if len(argv) != 2:
        print("usage: farm-remote.pyz container-task SPEC RESULT", file=sys.stderr)
        return 2
    spec_path, result_path = argv
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    signal.signal(signal.SIGTERM, _stop)
    result = WorkerTask(spec, sys.stdout.buffer, sys.stderr.buffer).run()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(f"{result_path}.partial", "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(f"{result_path}.partial", result_path)
    return 0
