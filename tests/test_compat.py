"""Tripwires: what the farm uses of Buildbot, twisted.web and docker-py beyond their public
API still works the same way.

If one of these fails after an upgrade, the module of ``buildbot_farm/compat/`` for that
library needs to follow it; the test's name says which part.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import docker
import pytest
from buildbot.config.errors import ConfigErrors
from buildbot.config.master import FileLoader
from buildbot.plugins import steps, util
from buildbot.process.build import Build
from buildbot.process.builder import Builder
from buildbot.worker.latent import AbstractLatentWorker
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITransport
from twisted.internet.testing import StringTransport
from twisted.python import failure
from twisted.web import http, server, static
from twisted.web.test.requesthelper import DummyChannel

from buildbot_farm.compat import docker_api, twisted_web
from buildbot_farm.compat.buildbot_api import (
    BUILD_HOOKS,
    builds_running,
    config_being_loaded,
    config_kwargs,
    release_latent_worker,
    run_first,
    steps_of,
)
from buildbot_farm.config_checks import STEP_ARGUMENTS, check_config_arguments
from buildbot_farm.service import FarmService


def test_buildstep_still_lists_the_arguments_it_takes() -> None:
    """BuildStep._params_names still holds the keywords every step takes."""
    assert {"name", "haltOnFailure", "doStepIf", "workdir", "locks"} <= set(STEP_ARGUMENTS)


def test_worker_and_scheduler_arguments_still_pass_through_check_config() -> None:
    """The checkConfig chains of latent workers and force schedulers still name their keywords."""
    # Imported in the test, where setup.cfg's warning filter applies: importing the force
    # scheduler at collection, after Buildbot's test kit turned warnings into errors, fails.
    from buildbot.schedulers.forcesched import ForceScheduler

    assert {"name", "password", "build_wait_timeout", "max_builds", "missing_timeout",
            "properties"} <= set(check_config_arguments(AbstractLatentWorker))
    assert {"builderNames", "label", "buttonName", "reason", "username", "priority",
            "properties", "codebases"} <= set(check_config_arguments(ForceScheduler))


def test_build_factories_still_keep_each_steps_class_and_arguments() -> None:
    """BuildFactory.steps still tells each step's class and the name it was given."""
    factory = util.BuildFactory([steps.ShellCommand(command=["true"], name="build"),
                                 steps.ArtifactUpload(workersrc="x")])
    assert [(cls.__name__, name) for cls, name in steps_of(factory)] == [
        ("ShellCommand", "build"), ("ArtifactUpload", "upload-artifacts")]


def test_master_cfg_still_runs_in_process_with_its_config_in_its_globals(tmp_path: Path) -> None:
    """Buildbot's loader still runs master.cfg here: the check a farm object adds runs, reports."""
    (tmp_path / "master.cfg").write_text(
        "from buildbot.plugins import reporters, util, worker\n"
        "c = BuildmasterConfig = {}\n"
        "c['buildbotNetUsageData'] = None\n"
        "c['protocols'] = {'pb': {'port': 'tcp:0'}}\n"
        "c['workers'] = [worker.Worker('w', 'p')]\n"
        "c['builders'] = [util.BuilderConfig(name='b', workernames=['w'],"
        " factory=util.BuildFactory())]\n"
        "c['multiMaster'] = True\n"
        "c['services'] = [util.FarmService(), reporters.BuildRecorder(farm='elsewhere')]\n"
    )
    with pytest.raises(ConfigErrors) as raised:
        FileLoader(str(tmp_path), "master.cfg").loadConfig()
    assert [e for e in raised.value.errors if "FarmService 'elsewhere'" in e], raised.value
    assert config_being_loaded() is None


def test_services_still_keep_their_master_cfg_arguments() -> None:
    """A BuildbotService still keeps the keyword arguments master.cfg gave it."""
    service = FarmService(db_url="sqlite:///x.sqlite", heartbeat_interval=5)
    assert config_kwargs(service) == {"db_url": "sqlite:///x.sqlite", "heartbeat_interval": 5}


def test_builders_still_list_the_builds_they_run() -> None:
    """Builder(name).building is still the list of the Build objects it runs."""
    builder = Builder("b")
    assert builds_running(builder) == []
    builder.building.append("a build")
    assert builds_running(builder) == ["a build"]


def test_builds_still_queue_their_steps_and_have_the_hooks_the_farm_overrides() -> None:
    """Build.steps is still the queue of steps to run, and startNextStep/buildFinished still
    take the arguments TokenMintingBuild's overrides take."""
    assert [list(inspect.signature(getattr(Build, hook)).parameters) for hook in BUILD_HOOKS] \
        == [["self"], ["self", "text", "results"]]
    request = SimpleNamespace(mergeSourceStampsWith=lambda others: [],
                              mergeReasons=lambda others: "a reason")
    build = Build([request], Builder("b"))
    build.workerforbuilder = SimpleNamespace(worker=None)
    build.steps = build.setupBuildSteps([steps.ShellCommand(command=["true"], name="later")])
    run_first(build, [steps.ShellCommand(command=["true"], name="first")])
    assert [step.name for step in build.steps] == ["first", "later"]
    assert all(step.build is build for step in build.steps)


def test_latent_workers_still_clear_their_build_wait_timer_when_a_build_starts() -> None:
    """A latent worker's build start still cancels ``build_wait_timer`` (request_start sets it),
    and ``_soft_disconnect``, what that timer calls, still takes no required argument."""

    class Timer:
        cancelled = False

        def active(self) -> bool:
            return not self.cancelled

        def cancel(self) -> None:
            self.cancelled = True

    worker = AbstractLatentWorker.__new__(AbstractLatentWorker)
    worker.machine = None
    timer = Timer()
    worker.build_wait_timer = timer
    worker.buildStarted(SimpleNamespace(isBusy=lambda: True))
    assert timer.cancelled
    assert worker.build_wait_timer is None
    parameters = inspect.signature(AbstractLatentWorker._soft_disconnect).parameters.values()
    assert all(p.default is not p.empty for p in list(parameters)[1:])
    calls: list[str] = []

    def soft_disconnect() -> str:
        calls.append("released")
        return "done"

    stand_in = SimpleNamespace(_soft_disconnect=soft_disconnect)
    assert release_latent_worker(stand_in) == "done"
    assert calls == ["released"]
    assert Build.stopped is False, "a new build no longer says it was not stopped"


def test_http_channels_still_know_the_request_line_before_the_body() -> None:
    """HTTPChannel still keeps the method, URI and protocol of a request whose body has not
    arrived."""
    channel = http.HTTPChannel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"PUT /bin/x?y=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n")
    assert twisted_web.request_line(channel) == (b"PUT", b"/bin/x?y=1", b"HTTP/1.1")
    channel.connectionLost(None)


def test_docker_py_still_has_the_request_helpers_container_task_uses() -> None:
    """docker-py's APIClient still has _put, _post, _url, _raise_for_status,
    _get_raw_response_socket, _disable_socket_timeout and its timeout, taking what compat
    passes them."""
    api = docker.APIClient(base_url="tcp://127.0.0.1:9", version="1.41")
    assert api._url("/containers/{0}/archive", "c1") == (
        "http://127.0.0.1:9/v1.41/containers/c1/archive")
    for name, parameters in [("_put", ["args", "kwargs"]), ("_post", ["args", "kwargs"]),
                             ("_raise_for_status", ["response"]),
                             ("_get_raw_response_socket", ["response"]),
                             ("_disable_socket_timeout", ["socket"])]:
        assert list(inspect.signature(getattr(api, name)).parameters) == parameters, name
    assert isinstance(api.timeout, (int, float)), "thd_path_exists passes the client's timeout"
    assert set(docker_api.__all__) == {"thd_put_archive_owned", "thd_attach_unlimited",
                                       "thd_path_exists"}, "a new helper needs its tripwire here"
    api.close()


def test_requests_still_say_when_their_client_hung_up() -> None:
    """``Request._disconnected`` (``twisted_web.disconnected``) is false, then true after a
    hang-up; if a Twisted release renames it, ``disconnected`` must follow."""
    request = server.Request(DummyChannel())
    assert twisted_web.disconnected(request) is False
    request.connectionLost(failure.Failure(ConnectionDone()))
    assert request._disconnected is True
    assert twisted_web.disconnected(request) is True


def test_static_file_still_parses_and_answers_one_range() -> None:
    """static.File's _parseRangeHeader, _doSingleRangeRequest and _setContentHeaders still
    give the offset, size, 206 and Content-Range/Length that ``twisted_web.single_range``
    and ``set_content_headers`` pass on; several ranges still give None."""
    file = static.File(__file__)
    # As File.render_GET sets them; Twisted declares File.type as a bare ``type = None``.
    file.type, file.encoding = "text/x-python", None  # type: ignore[assignment]
    request = server.Request(DummyChannel())
    request.requestHeaders.setRawHeaders(b"range", [b"bytes=10-19"])
    assert twisted_web.single_range(file, request) == (10, 10)
    twisted_web.set_content_headers(file, request, 10)
    assert request.code == 206
    size = Path(__file__).stat().st_size
    assert request.responseHeaders.getRawHeaders(b"content-range") == [
        f"bytes 10-19/{size}".encode()]
    assert request.responseHeaders.getRawHeaders(b"content-length") == [b"10"]
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"text/x-python"]
    several = server.Request(DummyChannel())
    several.requestHeaders.setRawHeaders(b"range", [b"bytes=0-1,5-6"])
    assert twisted_web.single_range(file, several) is None
    garbled = server.Request(DummyChannel())
    garbled.requestHeaders.setRawHeaders(b"range", [b"lines=1-2"])
    assert twisted_web.single_range(file, garbled) is None


def test_only_plain_tcp_requests_without_an_encoder_get_sendfile() -> None:
    """``plain_tcp_client`` still tells a plain TCP connection (tcp.Server) from others and
    sees a content encoder in ``Request._encoder``."""
    request = server.Request(DummyChannel())
    assert twisted_web.plain_tcp_client(request) is None
    plain = server.Request(DummyChannel())
    plain.transport = ITransport(object.__new__(tcp.Server))
    assert twisted_web.plain_tcp_client(plain) is plain.transport
    # Twisted declares Request._encoder as a bare ``_encoder = None``.
    plain._encoder = object()  # type: ignore[assignment]
    assert twisted_web.plain_tcp_client(plain) is None


def test_http_channels_still_finish_a_body_read_behind_their_back() -> None:
    """After the first bytes of a 9-byte body, ``body_read_elsewhere`` with the other 5 makes
    the channel hand the request over with the bytes it did see, then read the next request;
    a count the channel does not expect is refused."""
    channel = http.HTTPChannel()
    channel.requestFactory = http.Request
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nabcd")
    with pytest.raises(RuntimeError, match="does not expect 4 more"):
        twisted_web.body_read_elsewhere(channel, 4)
    (request,) = channel.requests
    received: list[bytes] = []
    request.process = lambda: received.append(request.content.getvalue())
    twisted_web.body_read_elsewhere(channel, 5)
    assert received == [b"abcd"]
    channel.connectionLost(None)
