"""in_thread, in_own_thread and engine_errors: the shared thread and Docker-error helpers."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
import requests
from docker.errors import APIError, ImageNotFound

from buildbot_farm.docker_errors import engine_errors
from buildbot_farm.thread_pool import in_own_thread, in_thread
from tests.harness.twisted_reactor import reactor


@pytest_twisted.ensureDeferred
async def test_in_thread_runs_off_the_reactor_thread_and_returns_the_result() -> None:
    """The function runs on a pool thread; its result and its exception come back."""
    main = threading.get_ident()
    ident, total = await in_thread(reactor, lambda a, b: (threading.get_ident(), a + b), 2, 3)
    assert (ident != main, total) == (True, 5)

    def fail() -> None:
        raise ValueError("from the thread")

    with pytest.raises(ValueError, match="from the thread"):
        await in_thread(reactor, fail)


@pytest_twisted.ensureDeferred
async def test_in_own_thread_runs_in_a_named_thread_of_its_own() -> None:
    """The function runs in a new thread called as asked, never on the pool; its result
    and its exception come back on the reactor."""
    main = threading.get_ident()
    name, ident, total = await in_own_thread(
        reactor, "farm-test-transfer",
        lambda a, b: (threading.current_thread().name, threading.get_ident(), a + b), 2, 3)
    assert (name, ident != main, total) == ("farm-test-transfer", True, 5)

    def fail() -> None:
        raise ValueError("from its own thread")

    with pytest.raises(ValueError, match="from its own thread"):
        await in_own_thread(reactor, "farm-test-failing", fail)


class Failed(Exception):
    """The caller's own error type."""


class Missing(Failed):
    """The caller's missing-image type."""


def translated(error: Exception, missing: type[Exception] | None = None) -> Exception:
    """What ``engine_errors("doing", "E", Failed, missing)`` turns ``error`` into."""
    with pytest.raises(Failed) as raised, engine_errors("doing", "E", Failed, missing):
        raise error
    return raised.value


def test_engine_answers_and_unreachable_engines_are_explained() -> None:
    """An engine's refusal quotes the engine; a dead connection says what to check."""
    refused = translated(APIError("500 Server Error", explanation="busy"))
    assert str(refused) == "doing: the Docker engine at E said: busy"
    unreachable = translated(requests.ConnectionError("refused"))
    assert str(unreachable) == (
        "doing: cannot reach the Docker engine at E (refused); check that it runs and that"
        " the master may use its socket"
    )


def test_a_missing_image_has_its_own_error_and_own_errors_pass() -> None:
    """ImageNotFound becomes the image-missing error when one is given; the caller's own
    exceptions are not rewrapped."""
    missing = translated(ImageNotFound("404", explanation="no such image"), Missing)
    assert (type(missing), str(missing)) == (Missing, "doing: no such image")
    plain = translated(ImageNotFound("404", explanation="no such image"))
    assert (type(plain), str(plain)) == (Failed, "doing: no such image")
    own = Failed("mine")
    assert translated(own) is own
