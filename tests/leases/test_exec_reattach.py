"""Execs that survive a dropped connection, through a real coordinator, and leases that live
while used: a TCP relay between client and coordinator stands for a load balancer that cuts."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.web.client import ResponseFailed

from buildbot_farm.leases import keys
from buildbot_farm.leases.client import CoordinatorClient
from buildbot_farm.leases.model import ExpiryPolicy
from tests.harness.relay import CuttableRelay
from tests.harness.twisted_reactor import reactor
from tests.leases.conftest import SECRET, RunningCoordinator, StartCoordinator, plain_http
from tests.leases.test_lease_cli import SCRIPT, _Capture, clean_environment

LINES = 400
COUNTING = f"for i in $(seq 1 {LINES}); do echo line $i; sleep 0.005; done; exit 3"
COUNTED = b"".join(b"line %d\n" % i for i in range(1, LINES + 1))


async def sleep(seconds: float) -> None:
    """Wait ``seconds`` on the reactor without blocking it."""
    await task.deferLater(reactor, seconds, lambda: None)


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait (without blocking the reactor) until condition() is true."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await sleep(0.02)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@pytest_twisted.async_yield_fixture
async def relays(start_coordinator: StartCoordinator) -> AsyncIterator[list[CuttableRelay]]:
    """Relays the test opens with ``relay_to``, stopped afterwards."""
    opened: list[CuttableRelay] = []
    yield opened
    for relay in opened:
        await relay.stop()


def relay_to(running: RunningCoordinator, opened: list[CuttableRelay]) -> CuttableRelay:
    """A relay to the coordinator's port, added to ``opened`` for the fixture to stop."""
    relay = CuttableRelay(reactor, "127.0.0.1", running.port.getHost().port)
    opened.append(relay)
    return relay


def client_via(relay: CuttableRelay, reattach: bool = True) -> CoordinatorClient:
    """A client acting as user-alice through ``relay``; it re-attaches cut execs unless ``reattach``
    is False."""
    user = "user-alice"
    return CoordinatorClient(relay.url(), user, keys.user_key(SECRET, user), plain_http(),
                             clock=reactor if reattach else None)


@pytest_twisted.ensureDeferred
async def test_a_cut_exec_through_the_proxy_gets_every_byte_and_its_status_once(
        start_coordinator: StartCoordinator, relays: list[CuttableRelay]) -> None:
    """Cut twice mid-output, the client re-attaches through the proxy by the exec's id and
    gets every byte of output and the exit status, each exactly once."""
    running = await start_coordinator()
    relay = relay_to(running, relays)
    alice = client_via(relay)
    name = (await alice.create("local"))["Name"]
    output: list[bytes] = []
    notices: list[str] = []
    cut_at = [len(COUNTED) // 4, len(COUNTED) // 2]

    def received(data: bytes) -> None:
        output.append(data)
        if cut_at and sum(map(len, output)) >= cut_at[0]:
            cut_at.pop(0)
            reactor.callLater(0, relay.cut)

    status = await alice.exec(name, "sh", ["-c", COUNTING], on_output=received,
                              on_notice=notices.append)
    assert b"".join(output) == COUNTED
    assert (status.exit_code, status.state) == (3, "exit status 3")
    assert relay.cuts >= 2
    assert sum("re-attaching" in notice for notice in notices) >= 2, notices


@pytest_twisted.ensureDeferred
async def test_an_exec_whose_client_never_comes_back_is_killed_after_the_grace_period(
        start_coordinator: StartCoordinator, relays: list[CuttableRelay]) -> None:
    """A client that does not re-attach (as Go's) leaves its command running only for the
    agent's --exec-grace; an explicit kill ends one at once."""
    # No sandbox: the command's pid must be one this test can see (no PID namespace).
    running = await start_coordinator(agent_arguments=("--exec-grace", "1.5"), sandbox="none")
    relay = relay_to(running, relays)
    go_like = client_via(relay, reattach=False)
    name = (await go_like.create("local"))["Name"]
    pids: list[int] = []
    started = go_like.exec(name, "sh", ["-c", "sleep 60 & echo $!; wait"],
                           on_output=lambda data: pids.append(int(data)))
    ran = defer.ensureDeferred(started)
    await until(lambda: pids)
    relay.cut()
    with pytest.raises(ResponseFailed):
        await ran
    await sleep(0.7)
    assert pid_alive(pids[0]), "the command was killed before its grace period"
    await until(lambda: not pid_alive(pids[0]), timeout=5)
    deadline = time.monotonic() + 5
    while (await go_like.status(name))["running"]:
        assert time.monotonic() < deadline, "the agent still counts the killed command"
        await sleep(0.05)

    pids.clear()
    alice = client_via(relay)
    ran = defer.ensureDeferred(alice.exec(name, "sh", ["-c", "sleep 60 & echo $!; wait"],
                                          on_output=lambda data: pids.append(int(data))))
    await until(lambda: pids)
    ran.cancel()  # what Ctrl-C does to `lease run`: the command is killed, not left to wait
    with pytest.raises(defer.CancelledError):
        await ran
    await until(lambda: not pid_alive(pids[0]), timeout=1)


@pytest_twisted.ensureDeferred
async def test_lease_run_reattaches_by_itself_when_the_proxy_connection_is_cut(
        start_coordinator: StartCoordinator, relays: list[CuttableRelay], tmp_path: Path) -> None:
    """`buildbot-farm lease run` through a relay that is cut mid-output prints every byte
    exactly once, says on stderr that it re-attached, and exits with the remote status."""
    running = await start_coordinator()
    relay = relay_to(running, relays)
    name = (await running.client().create("local"))["Name"]
    env = clean_environment(tmp_path / "home")
    env.update(FARM_COORDINATOR_URL=relay.url(), FARM_USER="user-alice",
               FARM_KEY=keys.user_key(SECRET, "user-alice"))
    capture = _Capture()
    argv = [str(SCRIPT), "lease", "run", name, "sh", "-c", COUNTING]
    reactor.spawnProcess(capture, argv[0], argv, env=env, path=str(tmp_path))
    await until(lambda: sum(map(len, capture.out)) >= len(COUNTED) // 3, timeout=30)
    assert relay.cut() >= 1
    code = await capture.ended
    err = b"".join(capture.err).decode()
    assert b"".join(capture.out) == COUNTED, err
    assert code == 3, err
    assert "re-attaching to the command at byte" in err


@pytest_twisted.ensureDeferred
async def test_a_lease_used_only_through_the_proxy_does_not_expire(
        start_coordinator: StartCoordinator) -> None:
    """With a 3 s idle timeout and the sweeper running, a 5 s exec and then 5 s of short
    proxied requests keep the lease; left alone, it expires.

    The timeout leaves room for a loaded machine (CI runs it beside other tests): a proxied
    request delayed by a second must not look like an idle lease.
    """
    running = await start_coordinator(policy=ExpiryPolicy(idle_timeout=3, max_lifetime=60))
    sweeper = task.LoopingCall(lambda: defer.ensureDeferred(running.coordinator.sweep()))
    sweeper.start(0.1)
    try:
        alice = running.client()
        name = (await alice.create("local"))["Name"]
        status = await alice.exec(name, "sh", ["-c", "sleep 5; echo done"])
        assert status.ok, status
        for _ in range(16):
            await alice.ls(name)
            await sleep(0.3)
        assert [b["Name"] for b in await alice.buildlets()] == [name]
        left_alone = time.monotonic()
        while await alice.buildlets():
            assert time.monotonic() - left_alone < 10, "the idle lease never expired"
            await sleep(0.2)
        assert time.monotonic() - left_alone >= 2.5, "the lease expired before its idle time"
    finally:
        sweeper.stop()


@pytest_twisted.ensureDeferred
async def test_proxied_requests_renew_the_lease_without_a_write_each(
        start_coordinator: StartCoordinator) -> None:
    """Twenty proxied requests in a row renew the lease once: the renewal is throttled."""
    running = await start_coordinator()
    alice = running.client()
    name = (await alice.create("local"))["Name"]
    await alice.ls(name)
    first = await running.coordinator.table.get(name)
    for _ in range(20):
        await alice.ls(name)
    again = await running.coordinator.table.get(name)
    assert first is not None
    assert again is not None
    assert first.renewed_at == again.renewed_at
    assert first.expires_at == again.expires_at


@pytest_twisted.ensureDeferred
async def test_ctrl_c_on_lease_run_kills_the_remote_command_at_once(
        start_coordinator: StartCoordinator, tmp_path: Path) -> None:
    """Ctrl-C on `buildbot-farm lease run` kills the remote command (with /exec/kill) before
    the CLI exits 130, rather than leaving it to the buildlet's grace period."""
    # No sandbox: the command's pid must be one this test can see (no PID namespace).
    running = await start_coordinator(sandbox="none")
    name = (await running.client().create("local"))["Name"]
    env = clean_environment(tmp_path / "home")
    env.update(FARM_COORDINATOR_URL=running.url, FARM_USER="user-alice",
               FARM_KEY=keys.user_key(SECRET, "user-alice"))
    capture = _Capture()
    argv = [str(SCRIPT), "lease", "run", name, "sh", "-c", "sleep 60 & echo $!; wait"]
    process = reactor.spawnProcess(capture, argv[0], argv, env=env, path=str(tmp_path))
    await until(lambda: b"\n" in b"".join(capture.out), timeout=30)
    pid = int(b"".join(capture.out))
    process.signalProcess("INT")
    assert await capture.ended == 130
    assert not pid_alive(pid), "the remote command outlived the interrupted `lease run`"
