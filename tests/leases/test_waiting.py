"""Creates on a full pool wait in line over real HTTP: order, timing, leaving, 503 without wait;
on PostgreSQL, a release by another process wakes the line; and all of it through nginx."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, task

from buildbot_farm import db
from buildbot_farm.leases.agent_client import AgentClient
from buildbot_farm.leases.client import CoordinatorClient, CoordinatorRequestError
from buildbot_farm.leases.coordinator import Coordinator
from buildbot_farm.leases.model import ExpiryPolicy
from buildbot_farm.leases.pools import BuildletType
from buildbot_farm.leases.providers import ProcessProvider
from buildbot_farm.leases.store import LeaseTable
from tests.db.conftest import schema_dsn
from tests.harness.nginx import nginx_binary, start_nginx
from tests.harness.ports import free_port
from tests.harness.twisted_reactor import reactor
from tests.leases.conftest import RunningCoordinator, StartCoordinator, plain_http


async def until(predicate: Any, within: float = 10.0) -> None:
    """Let the reactor run until ``predicate()`` holds."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await task.deferLater(reactor, 0.01, lambda: None)


class Waiting:
    """A create waiting in line through the client, with the places it was told."""

    def __init__(self, client: CoordinatorClient, wait: float = 30) -> None:
        self.places: list[int] = []
        self.done_at: float | None = None
        self.result = defer.ensureDeferred(
            client.create("local", wait=wait, on_place=self.places.append)
        )
        self.result.addBoth(self._done)

    def _done(self, result: object) -> object:
        self.done_at = time.monotonic()
        return result


async def full_pool(start_coordinator: StartCoordinator) -> tuple[RunningCoordinator, str]:
    """A coordinator whose only buildlet is leased by user-alice; the coordinator and that
    buildlet's name."""
    running = await start_coordinator(max_count=1)
    return running, (await running.client("user-alice").create("local"))["Name"]


@pytest_twisted.ensureDeferred
async def test_a_waiter_gets_the_buildlet_as_soon_as_it_is_released(
    start_coordinator: StartCoordinator,
) -> None:
    """With max_count=1, a waiting create hears it is next, and gets a buildlet right after."""
    running, first = await full_pool(start_coordinator)
    bob = Waiting(running.client("user-bob"))
    await until(lambda: bob.places == [0])
    await task.deferLater(reactor, 0.3, lambda: None)
    assert not bob.result.called
    released = time.monotonic()
    await running.client("user-alice").destroy(first)
    lease = await bob.result
    assert bob.done_at is not None
    took = bob.done_at - released
    assert took < 1.0, f"the waiter got its buildlet {took:.2f} s after the release"
    assert lease["Name"] == "user-bob-local-0"
    assert [b["Name"] for b in await running.client("user-bob").buildlets()] == [lease["Name"]]


@pytest_twisted.ensureDeferred
async def test_the_stream_says_the_place_before_the_buildlet(
    start_coordinator: StartCoordinator,
) -> None:
    """Over raw HTTP, wait= answers 200 with JSON lines: the place at once, the buildlet later."""
    running, first = await full_pool(start_coordinator)
    bob = running.client("user-bob")
    response = await plain_http().post(
        running.url + "/buildlet/create", auth=("user-bob", bob._auth[1]),
        data={"type": "local", "wait": "30"},
    )
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [
        b"application/x-ndjson; charset=utf-8"
    ]
    assert response.headers.getRawHeaders(b"x-accel-buffering") == [b"no"]
    body = defer.ensureDeferred(response.content())
    await task.deferLater(reactor, 0.3, lambda: None)
    assert not body.called, "the stream ended before the buildlet was released"
    await running.client("user-alice").destroy(first)
    lines = [json.loads(line) for line in (await body).splitlines()]
    assert lines[0] == {"status": {"ahead": 0}}
    assert lines[-1]["buildlet"]["Name"] == "user-bob-local-0"


@pytest_twisted.ensureDeferred
async def test_two_waiters_are_served_in_the_order_they_came(
    start_coordinator: StartCoordinator,
) -> None:
    """The first in line gets the first buildlet freed; the second moves up, then gets the next."""
    running, first = await full_pool(start_coordinator)
    bob = Waiting(running.client("user-bob"))
    await until(lambda: bob.places == [0])
    carol = Waiting(running.client("user-carol"))
    await until(lambda: carol.places == [1])
    await running.client("user-alice").destroy(first)
    bobs = await bob.result
    await until(lambda: carol.places == [1, 0])
    assert not carol.result.called
    await running.client("user-bob").destroy(bobs["Name"])
    carols = await carol.result
    assert carols["Name"] == "user-carol-local-0"
    assert bob.done_at is not None
    assert carol.done_at is not None
    assert bob.done_at < carol.done_at


@pytest_twisted.ensureDeferred
async def test_a_waiter_that_hangs_up_leaves_the_line(
    start_coordinator: StartCoordinator,
) -> None:
    """A disconnected waiter is taken out of line, the next moves up and gets the buildlet."""
    running, first = await full_pool(start_coordinator)
    bob = Waiting(running.client("user-bob"))
    await until(lambda: bob.places == [0])
    carol = Waiting(running.client("user-carol"))
    await until(lambda: carol.places == [1])
    bob.result.cancel()
    with pytest.raises(defer.CancelledError):
        await bob.result
    await until(lambda: carol.places == [1, 0])
    await running.client("user-alice").destroy(first)
    assert (await carol.result)["Name"] == "user-carol-local-0"
    assert await running.coordinator.owned("user-bob") == []
    assert [lease.owner for lease in await running.coordinator.table.all()] == ["user-carol"]


@pytest_twisted.ensureDeferred
async def test_without_wait_a_full_pool_is_503_and_nobody_jumps_the_line(
    start_coordinator: StartCoordinator,
) -> None:
    """No wait: 503 + Retry-After, also while others wait in line; a bad wait= is 400."""
    running, first = await full_pool(start_coordinator)
    bob = Waiting(running.client("user-bob"))
    await until(lambda: bob.places == [0])
    carol = running.client("user-carol")
    auth = ("user-carol", carol._auth[1])
    response = await plain_http().post(
        running.url + "/buildlet/create", auth=auth, data={"type": "local"}
    )
    assert response.code == 503
    assert response.headers.getRawHeaders(b"retry-after") == [b"30"]
    assert "wait in line" in json.loads(await response.content())["error"]
    for bad in ("soon", "-1", "nan"):
        response = await plain_http().post(
            running.url + "/buildlet/create", auth=auth, data={"type": "local", "wait": bad}
        )
        assert response.code == 400, bad
        assert "wait=" in json.loads(await response.content())["error"]
    await running.client("user-alice").destroy(first)
    assert (await bob.result)["Name"] == "user-bob-local-0"


@pytest_twisted.ensureDeferred
async def test_a_wait_that_runs_out_is_503_and_leaves_the_line(
    start_coordinator: StartCoordinator,
) -> None:
    """When nothing frees up within wait=, the create fails with 503 saying so."""
    running, first = await full_pool(start_coordinator)
    started = time.monotonic()
    with pytest.raises(CoordinatorRequestError, match=r"freed up within 0\.5 s") as e:
        await running.client("user-bob").create("local", wait=0.5)
    assert e.value.status == 503
    assert 0.5 <= time.monotonic() - started < 3
    with pytest.raises(CoordinatorRequestError, match="in use") as again:
        await running.client("user-carol").create("local")
    assert again.value.status == 503
    assert "wait in line" not in str(again.value), "the line was left with a waiter in it"
    assert first


@pytest_twisted.ensureDeferred
async def test_on_postgresql_a_buildlet_freed_by_another_process_wakes_the_line(
    pg_dsn: str, tmp_path: Path
) -> None:
    """A row of this coordinator removed through another connection (another master's
    process) is heard by LISTEN/NOTIFY, and the waiter is served at once, not at the sweep."""
    url = schema_dsn(pg_dsn, f"t_{uuid.uuid4().hex[:12]}")
    database = await db.connect(url, reactor)
    other_process = await db.connect(url, reactor)
    provider = ProcessProvider(tmp_path / "buildlets", reactor)
    agents = AgentClient(plain_http())
    types = {"local": BuildletType("local", provider, max_count=1)}
    coordinator = Coordinator(database, reactor, types, agents, name="shared")
    try:
        await coordinator.start()
        held = await coordinator.create("user-alice", "local")
        places: list[int] = []
        waiting = coordinator.create_waiting("user-bob", "local", 30, places.append)
        await until(lambda: places == [0])
        await provider.destroy(held.handle)
        released = time.monotonic()
        await LeaseTable(other_process, "shared", ExpiryPolicy()).remove(held.name)
        lease = await waiting
        took = time.monotonic() - released
        assert lease.owner == "user-bob"
        assert took < 1.0, f"the waiter was served {took:.2f} s after the other process's release"
    finally:
        await coordinator.stop()
        await provider.reap(set())
        await other_process.stop()
        await database.stop()


@pytest_twisted.ensureDeferred
async def test_through_nginx_the_place_streams_and_hanging_up_leaves_the_line(
    start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    """Behind nginx with its default buffering, the place in line arrives while waiting, the
    buildlet after the release, and a client that hangs up at nginx leaves the line."""
    running, first = await full_pool(start_coordinator)
    front = Nginx(tmp_path / "nginx", running.url)
    try:
        await front.start()
        via_nginx = CoordinatorClient(
            front.url, "user-bob", running.client("user-bob")._auth[1], plain_http()
        )
        quitter = Waiting(via_nginx)
        await until(lambda: quitter.places == [0])
        quitter.result.cancel()
        with pytest.raises(defer.CancelledError):
            await quitter.result
        await until(lambda: running.coordinator.waiting("local") == 0)
        bob = Waiting(via_nginx)
        await until(lambda: bob.places == [0])
        await running.client("user-alice").destroy(first)
        assert (await bob.result)["Name"] == "user-bob-local-0"
    finally:
        front.stop()


class Nginx:
    """nginx on a free loopback port, proxying everything to ``upstream`` as configured out of
    the box (response buffering on)."""

    def __init__(self, workdir: Path, upstream: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstream = upstream
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        """Write a configuration, start nginx, and wait until it answers."""
        binary = nginx_binary("this test needs nginx")
        self.process = start_nginx(
            binary, self.workdir,
            f" server {{\n  listen 127.0.0.1:{self.port};\n"
            f"  location / {{ proxy_pass {self.upstream}; proxy_http_version 1.1; }}\n }}",
        )
        for _ in range(200):
            try:
                await plain_http().get(self.url + "/")
                return
            except Exception:
                await task.deferLater(reactor, 0.05, lambda: None)
        pytest.fail(f"nginx did not start: {(self.workdir / 'error.log').read_text()}")

    def stop(self) -> None:
        """Stop nginx."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
