"""The coordinator over real HTTP with real agents: leases, proxying, expiry, restarts."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import task

from buildbot_farm.leases import keys
from buildbot_farm.leases.agent_client import AgentClient, AgentError
from buildbot_farm.leases.client import CoordinatorClient, CoordinatorRequestError
from buildbot_farm.leases.model import ExpiryPolicy
from buildbot_farm.leases.pools import NoSuchBuildlet
from tests.harness.twisted_reactor import reactor
from tests.leases.conftest import SECRET, StartCoordinator, plain_http


async def run(client: CoordinatorClient, name: str, *command: str) -> tuple[int | None, bytes]:
    """Run ``command`` on buildlet ``name`` through ``client``; its exit code and all its output."""
    output: list[bytes] = []
    status = await client.exec(name, command[0], command[1:], on_output=output.append)
    return status.exit_code, b"".join(output)


@pytest_twisted.ensureDeferred
async def test_lease_run_and_release_a_buildlet(start_coordinator: StartCoordinator) -> None:
    """Create leases a named buildlet, list shows it, exec runs on it, halt destroys it."""
    running = await start_coordinator()
    alice = running.client()
    lease = await alice.create("local")
    assert lease["Name"] == "user-alice-local-0"
    assert lease["Type"] == "local"
    assert lease["Created"].endswith("Z")
    assert [b["Name"] for b in await alice.buildlets()] == ["user-alice-local-0"]

    assert await run(alice, lease["Name"], "python3", "-c", "print('hi from the buildlet')") == (
        0, b"hi from the buildlet\n",
    )
    code, _ = await run(alice, lease["Name"], "sh", "-c", "exit 3")
    assert code == 3

    home = running.provider.root / lease["Name"]
    assert home.is_dir()
    await alice.destroy(lease["Name"])
    assert await alice.buildlets() == []
    assert not home.exists(), "the buildlet's directory outlived its lease"
    with pytest.raises(CoordinatorRequestError) as gone:
        await alice.status(lease["Name"])
    assert gone.value.status == 502


@pytest_twisted.ensureDeferred
async def test_exec_output_streams_through_the_proxy(start_coordinator: StartCoordinator) -> None:
    """The first line of a slow command reaches the client before the command ends."""
    running = await start_coordinator()
    alice = running.client()
    name = (await alice.create("local"))["Name"]
    arrivals: list[float] = []
    start = time.monotonic()
    status = await alice.exec(
        name, "sh", ["-c", "echo first; sleep 1.5; echo second"],
        on_output=lambda data: arrivals.append(time.monotonic() - start),
    )
    assert status.ok
    assert arrivals[0] < 1.0, f"first output arrived after {arrivals[0]:.2f} s"
    assert arrivals[-1] >= 1.4


@pytest_twisted.ensureDeferred
async def test_wrong_missing_or_malformed_credentials_are_401(
    start_coordinator: StartCoordinator,
) -> None:
    """Bad auth of each kind is refused with 401 and a reason, and creates nothing."""
    running = await start_coordinator()
    bad = CoordinatorClient(running.url, "user-alice", "0" * 64, plain_http())
    with pytest.raises(CoordinatorRequestError, match="wrong key for user-alice") as wrong:
        await bad.create("local")
    assert wrong.value.status == 401
    for header in (None, b"Bearer x", b"Basic !!!", b"Basic " + base64.b64encode(b"nocolon")):
        headers = {b"Authorization": [header]} if header else {}
        response = await plain_http().post(running.url + "/buildlet/create", headers=headers)
        assert response.code == 401
        assert "error" in json.loads(await response.content())
    assert await running.coordinator.table.all() == []


@pytest_twisted.ensureDeferred
async def test_someone_elses_buildlet_answers_as_a_missing_one(
    start_coordinator: StartCoordinator,
) -> None:
    """Proxying to another user's buildlet gets the same 502 and message as a missing one."""
    running = await start_coordinator()
    name = (await running.client("user-alice").create("local"))["Name"]
    bob = running.client("user-bob")
    auth = ("user-bob", keys.user_key(SECRET, "user-bob"))
    answers = []
    for target in (name, "user-alice-local-7"):
        response = await plain_http().get(
            running.url + "/status", auth=auth, headers={"X-Buildlet-Proxy": target}
        )
        body = json.loads(await response.content())
        answers.append((response.code, body["error"].replace(repr(target), "NAME")))
    assert answers[0] == answers[1]
    assert answers[0][0] == 502
    with pytest.raises(CoordinatorRequestError, match="no live buildlet"):
        await bob.status(name)
    assert await bob.buildlets() == []
    assert (await running.client("user-alice").status(name))["Version"] >= 23


@pytest_twisted.ensureDeferred
async def test_bad_create_requests_say_what_is_wrong(start_coordinator: StartCoordinator) -> None:
    """Unknown types, missing type fields and GETs on create are refused with 4xx and advice."""
    running = await start_coordinator()
    alice = running.client()
    with pytest.raises(CoordinatorRequestError, match=r"unknown buildlet type 'gpu'.*local") as e:
        await alice.create("gpu")
    assert e.value.status == 400
    auth = ("user-alice", alice._auth[1])
    missing = await plain_http().post(running.url + "/buildlet/create", auth=auth, data={})
    assert missing.code == 400
    wrong_method = await plain_http().get(running.url + "/buildlet/create", auth=auth)
    assert wrong_method.code == 405
    nowhere = await plain_http().get(running.url + "/nowhere", auth=auth)
    assert nowhere.code == 404


@pytest_twisted.ensureDeferred
async def test_a_full_pool_answers_503_with_retry_after(
    start_coordinator: StartCoordinator,
) -> None:
    """With max_count buildlets leased, the next create is 503 with Retry-After."""
    running = await start_coordinator(max_count=1)
    alice = running.client()
    await alice.create("local")
    auth = ("user-alice", alice._auth[1])
    response = await plain_http().post(
        running.url + "/buildlet/create", auth=auth, data={"type": "local"}
    )
    assert response.code == 503
    assert response.headers.getRawHeaders(b"retry-after") == [b"30"]
    assert "in use" in json.loads(await response.content())["error"]


@pytest_twisted.ensureDeferred
async def test_leases_expire_when_idle_on_a_fake_clock(start_coordinator: StartCoordinator) -> None:
    """Use renews a lease; idle_timeout without use, or max_lifetime, ends it."""
    clock = task.Clock()
    clock.advance(1_000_000)
    running = await start_coordinator(
        policy=ExpiryPolicy(idle_timeout=60, max_lifetime=150), clock=clock
    )
    coordinator = running.coordinator
    lease = await coordinator.create("user-alice", "local")
    clock.advance(50)
    await coordinator.use("user-alice", lease.name)
    clock.advance(50)
    assert await coordinator.sweep() == []
    await coordinator.use("user-alice", lease.name)
    clock.advance(55)
    assert await coordinator.sweep() == [lease.name], "max_lifetime did not end the lease"
    with pytest.raises(NoSuchBuildlet):
        await coordinator.use("user-alice", lease.name)
    assert not (running.provider.root / lease.name).exists()


@pytest_twisted.ensureDeferred
async def test_a_lease_expires_for_real(start_coordinator: StartCoordinator) -> None:
    """With a 1 s idle timeout on the real clock, the sweeper destroys an unused lease."""
    running = await start_coordinator(policy=ExpiryPolicy(idle_timeout=1, max_lifetime=60))
    alice = running.client()
    name = (await alice.create("local"))["Name"]
    await task.deferLater(reactor, 1.2, lambda: None)
    assert await running.coordinator.sweep() == [name]
    assert await alice.buildlets() == []


@pytest_twisted.ensureDeferred
async def test_a_restarted_coordinator_keeps_live_leases_and_reaps_orphans(
    start_coordinator: StartCoordinator,
) -> None:
    """After a crash, leases are still listed and reach the same agent; unowned buildlets die."""
    first = await start_coordinator()
    alice = first.client()
    name = (await alice.create("local"))["Name"]
    await run(alice, name, "sh", "-c", "echo kept > marker")
    orphan = await first.provider.start("orphan-local-9", "s3cret", lambda handle: None)
    await first.port.stopListening()  # the crash: no cleanup of any kind

    second = await start_coordinator()
    alice_again = second.client()
    assert [b["Name"] for b in await alice_again.buildlets()] == [name]
    assert await run(alice_again, name, "cat", "marker") == (0, b"kept\n")
    assert not (second.provider.root / "orphan-local-9").exists()
    with pytest.raises(AgentError):  # the orphan's agent is gone: nothing answers its URL
        await AgentClient(plain_http(), timeout=2).status(orphan.url, "s3cret")


@pytest_twisted.ensureDeferred
async def test_a_warm_pool_makes_leasing_immediate(start_coordinator: StartCoordinator) -> None:
    """With warm=1 an idle buildlet waits ready, is handed out at once, and is replaced."""
    running = await start_coordinator(max_count=3, warm=1)
    await running.coordinator.wait_until_warm()
    alice = running.client()
    started = time.monotonic()
    lease = await alice.create("local")
    took = time.monotonic() - started
    assert lease["Name"] == "user-alice-local-0"
    assert took < 0.5, f"a warm lease took {took:.2f} s"
    await running.coordinator.wait_until_warm()
    assert await running.coordinator.table.count_idle("local") == 1
    assert (await run(alice, lease["Name"], "true"))[0] == 0


@pytest_twisted.ensureDeferred
async def test_tar_escapes_are_refused_through_the_proxy(
    start_coordinator: StartCoordinator, tmp_path: Path
) -> None:
    """An archive with a member escaping the work dir is refused and writes nothing."""
    running = await start_coordinator()
    alice = running.client()
    name = (await alice.create("local"))["Name"]
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        data = b"owned"
        member = tarfile.TarInfo("../escaped")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    archive.seek(0)
    with pytest.raises(CoordinatorRequestError, match="escaped") as refused:
        await alice.put_tgz(name, archive)
    assert refused.value.status == 400
    assert not (running.provider.root / name / "escaped").exists()
    assert not list(running.provider.root.rglob("escaped")), "a member escaped the work dir"
    assert await run(alice, name, "ls", "-A") == (0, b""), "a refused archive wrote something"


@pytest_twisted.ensureDeferred
async def test_a_large_upload_and_download_cross_the_proxy_intact(
    start_coordinator: StartCoordinator,
) -> None:
    """A 3 MiB file (spooled to disk by the web server) goes up and comes back byte for byte."""
    running = await start_coordinator()
    alice = running.client()
    name = (await alice.create("local"))["Name"]
    payload = bytes(range(256)) * (3 * 4096)
    await alice.put_file(name, io.BytesIO(payload), "big/blob.bin")
    received: list[bytes] = []
    await alice.get_stream(name, "/read", {"path": "big/blob.bin"}, received.append)
    assert b"".join(received) == payload


def test_exit_codes_follow_the_shell_convention() -> None:
    """A signalled command maps to 128+N, an unstartable one to 255, as a shell reports them."""
    from buildbot_farm.remote.protocol import ExitStatus

    assert ExitStatus(3, None, "exit status 3").as_exit_code() == 3
    assert ExitStatus(None, "SIGKILL", "signal: SIGKILL").as_exit_code() == 137
    assert ExitStatus(None, None, "error: cannot start").as_exit_code() == 255
