"""ContainerTask's arguments are checked at config time, each error naming its argument."""

from __future__ import annotations

# The standard library's TestCase, not trial's: trial spins the reactor that pytest-twisted
# already runs, and could run a thread callback twice when it follows an async fixture.
import unittest
from typing import Any

from buildbot.process.properties import Properties, Property
from buildbot.test.util.config import ConfigErrorsMixin

from buildbot_farm.containers import ContainerTask
from buildbot_farm.containers._spec import SPEC_ARGUMENTS, TaskSpec


class ContainerTaskConfigTests(ConfigErrorsMixin, unittest.TestCase):
    """ContainerTask's arguments at config time: what is accepted, and the config error each mistake
    raises."""

    def test_a_complete_task_is_valid(self) -> None:
        """The issue's example configuration is accepted as written."""
        ContainerTask(
            name="compile", image="builder:bookworm", command=["make", "-C", "/work/src", "all"],
            inputs={"src/": "/work/src"}, outputs=["/work/src/out/**"], env={"CC": "gcc"},
            workdir="/work/src", timeout=3600, network=None,
            resources={"cpus": 2, "memory": "2g", "pids": 512}, docker_host=None,
        )

    def test_image_and_command_are_required(self) -> None:
        """A missing image or an empty command is a config error naming it."""
        with self.assertRaisesConfigError("ContainerTask: image: is required"):
            ContainerTask(command=["true"])
        with self.assertRaisesConfigError("ContainerTask: command: must be a non-empty list"):
            ContainerTask(image="i", command=[])

    def test_input_escaping_the_build_dir_is_refused(self) -> None:
        """An input path climbing out of the build directory is refused at checkconfig."""
        with self.assertRaisesConfigError("inputs: the worker path '../x' escapes the build"):
            ContainerTask(image="i", command=["true"], inputs={"../x": "/work"})

    def test_bad_values_are_named(self) -> None:
        """Timeouts, resources, networks, hosts and outputs outside the mappings are named."""
        cases: list[tuple[dict[str, Any], str]] = [
            ({"timeout": 0}, "timeout: must be a number of seconds > 0"),
            ({"resources": {"memory": "lots"}}, "resources: memory must be bytes or a size"),
            ({"resources": {"gpus": 1}}, "resources: unknown key(s) gpus"),
            ({"network": "bad name!"}, "network: must be None (no network)"),
            ({"docker_host": "localhost"}, "docker_host: must be None"),
            ({"outputs": ["/usr/**"]}, "outputs: the outputs pattern '/usr/**' matches nothing"),
            ({"inputs": {"a": "rel"}}, "inputs: the container path 'rel' must be absolute"),
            ({"engine": "remote"}, "engine: must be 'master' (the task runs on the master's"),
            ({"engine": "worker", "docker_host": "tcp://build1:2376"},
             "docker_host: with engine='worker' must be None (the worker's DOCKER_HOST"),
        ]
        for kwargs, message in cases:
            with self.assertRaisesConfigError(message):
                ContainerTask(image="i", command=["true"], **kwargs)

    def test_the_workers_engine_is_a_setting(self) -> None:
        """engine='worker' is accepted, alone or with the worker's socket."""
        ContainerTask(image="i", command=["true"], engine="worker")
        ContainerTask(image="i", command=["true"], engine="worker",
                      docker_host="unix:///run/user/1000/docker.sock")

    def test_renderables_are_checked_when_rendered(self) -> None:
        """Renderable arguments pass checkconfig; they are checked when the build renders them
        (the step fails on these problems: tests/test_steps_buildbot_kit.py)."""
        step = ContainerTask(image=Property("image"), command=["true"], inputs=Property("inputs"))
        properties = Properties(image="", inputs={"../x": "/work"})
        rendered: list[dict[str, Any]] = []
        properties.render({n: getattr(step.spec, n) for n in SPEC_ARGUMENTS}).addCallback(
            rendered.append)
        problems = TaskSpec(**rendered[0]).problems()
        assert [p.split(":")[0] for p in problems] == ["image", "inputs"], problems
        assert "escapes the build" in problems[1]
