"""ContainerTask's arguments, checked in one place at config time and again once rendered."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from buildbot.interfaces import IRenderable

from buildbot_farm.config_checks.values import is_positive, is_whole_at_least
from buildbot_farm.remote.task_paths import InputMap, OutputFilter, PathProblem

DEFAULT_WORKDIR = "/work"
DEFAULT_PIDS = 4096
_MEMORY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([bkmg]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
ENGINES = ("master", "worker")
_NETWORK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")


@dataclass
class TaskSpec:
    """Everything a user writes in ``steps.ContainerTask(...)`` besides the step's own arguments."""

    image: Any = None
    command: Any = None
    inputs: Any = None
    outputs: Any = None
    env: Any = field(default_factory=dict)
    workdir: Any = DEFAULT_WORKDIR
    timeout: Any = None
    network: Any = None
    resources: Any = field(default_factory=dict)
    docker_host: Any = None
    engine: Any = "master"
    pull: Any = False
    worker_python: Any = "python3"

    def problems(self) -> list[str]:
        """What is wrong, one message per argument; renderables not yet rendered are skipped."""
        found: list[str] = []

        def check(name: str, ok: bool, message: str) -> None:
            if not _renderable(getattr(self, name)) and not ok:
                found.append(f"{name}: {message}")

        check("image", isinstance(self.image, str) and bool(self.image.strip()),
              f"is required: the image's name or id on the engine, not {self.image!r}")
        check("command", _is_command(self.command),
              f"must be a non-empty list of strings (or one string), not {self.command!r}")
        check("env", _is_str_map(self.env), f"must be a dict of strings, not {self.env!r}")
        check("timeout", self.timeout is None or is_positive(self.timeout),
              f"must be a number of seconds > 0 or None, not {self.timeout!r}")
        check("network", self.network is None or
              (isinstance(self.network, str) and bool(_NETWORK.match(self.network))),
              f"must be None (no network) or a short name for the task's internal network"
              f" (letters, digits, '_', '.', '-'), not {self.network!r}")
        check("docker_host", self.docker_host is None or
              (isinstance(self.docker_host, str) and "://" in self.docker_host),
              "must be None (the master's engine) or a URL such as unix:///var/run/docker.sock"
              f" or tcp://host:2376, not {self.docker_host!r}")
        check("engine", self.engine in ENGINES,
              "must be 'master' (the task runs on the master's Docker engine) or 'worker' (on"
              f" the engine of the host the build's worker runs on), not {self.engine!r}")
        check("docker_host", self.engine != "worker" or self.docker_host is None or
              (isinstance(self.docker_host, str) and self.docker_host.startswith("unix://")),
              "with engine='worker' must be None (the worker's DOCKER_HOST or"
              " /var/run/docker.sock) or the worker's socket as unix:///path, not"
              f" {self.docker_host!r}")
        check("pull", isinstance(self.pull, bool), f"must be True or False, not {self.pull!r}")
        check("worker_python", isinstance(self.worker_python, str) and bool(self.worker_python),
              f"must be the worker's Python command, not {self.worker_python!r}")
        if not _renderable(self.resources):
            found.extend(f"resources: {p}" for p in resource_problems(self.resources))
        found.extend(self._path_problems())
        return found

    def _path_problems(self) -> list[str]:
        if any(_renderable(v) for v in (self.inputs, self.workdir, self.outputs)):
            return []
        if _renderable_inside(self.inputs) or _renderable_inside(self.outputs):
            return []
        try:
            inputs = InputMap.parse(self.inputs, self.workdir)
        except PathProblem as error:
            return [f"inputs: {error}"]
        if self.outputs is not None and (
            isinstance(self.outputs, str) or not isinstance(self.outputs, Sequence)
        ):
            return [f"outputs: must be a list of container path patterns, not {self.outputs!r}"]
        try:
            OutputFilter(self.outputs, inputs)
        except PathProblem as error:
            return [f"outputs: {error}"]
        return []

    def command_list(self) -> list[str]:
        """The command as a list (a string runs through ``/bin/sh -c``)."""
        if isinstance(self.command, str):
            return ["/bin/sh", "-c", self.command]
        return [str(part) for part in self.command]

    def input_map(self) -> InputMap:
        """The checked input mapping (call after ``problems()`` came back empty)."""
        return InputMap.parse(self.inputs, self.workdir)

    def output_filter(self) -> OutputFilter:
        """The checked outputs filter (call after ``problems()`` came back empty)."""
        return OutputFilter(self.outputs, self.input_map())

    def host_limits(self) -> dict[str, Any]:
        """Resource limits as docker SDK ``create_host_config`` arguments."""
        resources = dict(self.resources or {})
        limits: dict[str, Any] = {"pids_limit": int(resources.get("pids", DEFAULT_PIDS))}
        if "cpus" in resources:
            limits["nano_cpus"] = int(float(resources["cpus"]) * 1e9)
        if "memory" in resources:
            limits["mem_limit"] = memory_bytes(resources["memory"])
            limits["memswap_limit"] = limits["mem_limit"]
        return limits


SPEC_ARGUMENTS = tuple(f.name for f in fields(TaskSpec))


def resource_problems(resources: Any) -> list[str]:
    """What is wrong with a ``resources`` dict (keys cpus, memory, pids)."""
    if not isinstance(resources, Mapping):
        return [f"must be a dict with cpus, memory and/or pids, not {resources!r}"]
    found = []
    unknown = sorted(set(resources) - {"cpus", "memory", "pids"})
    if unknown:
        found.append(f"unknown key(s) {', '.join(map(str, unknown))}; use cpus, memory, pids")
    if "cpus" in resources and not is_positive(resources["cpus"]):
        found.append(f"cpus must be a number > 0, not {resources['cpus']!r}")
    if "memory" in resources:
        try:
            memory_bytes(resources["memory"])
        except ValueError as error:
            found.append(str(error))
    pids = resources.get("pids", DEFAULT_PIDS)
    if not is_whole_at_least(pids, 1):
        found.append(f"pids must be a whole number >= 1, not {pids!r}")
    return found


def memory_bytes(value: Any) -> int:
    """Bytes from an int or a string such as ``512m`` or ``2g``; ValueError if unusable."""
    if is_whole_at_least(value, 4 << 20):
        return value
    match = _MEMORY.match(value) if isinstance(value, str) else None
    if match:
        amount = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
        if amount >= 4 << 20:
            return amount
    raise ValueError(f"memory must be bytes or a size like '512m' or '2g', >= 4m, not {value!r}")


def _renderable(value: Any) -> bool:
    return IRenderable.providedBy(value)


def _renderable_inside(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_renderable(k) or _renderable(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_renderable(v) for v in value)
    return False


def _is_command(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(part, str) or _renderable(part) for part in value)
    )


def _is_str_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(k, str) and (isinstance(v, str) or _renderable(v)) for k, v in value.items()
    )
