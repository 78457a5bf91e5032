"""`buildbot-farm lease ...` and `buildbot-farm key` run as a user would, on a real coordinator."""

from __future__ import annotations

import io
import os
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.task import deferLater
from twisted.python import failure
from twisted.web import pages, resource, server

from buildbot_farm.leases import keys, transfers
from buildbot_farm.remote.errors import ArchiveError
from tests.harness.ports import free_port
from tests.harness.twisted_reactor import reactor
from tests.leases.conftest import SECRET, RunningCoordinator, StartCoordinator

SCRIPT = Path(sys.executable).parent / "buildbot-farm"


@dataclass
class Outcome:
    """How one run of the console script went."""

    code: int
    out: bytes
    err: str
    arrivals: list[float] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The standard output decoded as text."""
        return self.out.decode()


class _Capture(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.arrivals: list[float] = []
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)
        self.arrivals.append(time.monotonic())

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: failure.Failure) -> None:
        self.ended.callback(reason.value.exitCode)


@dataclass
class Cli:
    """Runs the console script in ``cwd`` with ``env``, without blocking the test's reactor."""

    env: dict[str, str]
    cwd: Path

    async def __call__(self, *args: str, env: dict[str, str] | None = None) -> Outcome:
        """Run the console script with ``args`` (in ``env`` if given, else ``self.env``)."""
        capture = _Capture()
        argv = [str(SCRIPT), *args]
        reactor.spawnProcess(capture, argv[0], argv, env=env or self.env, path=str(self.cwd))
        code = await capture.ended
        return Outcome(
            code, b"".join(capture.out), b"".join(capture.err).decode(), capture.arrivals
        )


def clean_environment(home: Path) -> dict[str, str]:
    """The test's environment without farm settings, with an empty HOME."""
    home.mkdir(exist_ok=True)
    unwanted = {"XDG_CONFIG_HOME", "FARM_COORDINATOR_URL", "FARM_USER", "FARM_KEY"}
    env = {k: v for k, v in os.environ.items() if k not in unwanted}
    env["HOME"] = str(home)
    return env


@dataclass
class Farm:
    """A coordinator and a command line configured (by environment) as user-alice."""

    running: RunningCoordinator
    cli: Cli
    cwd: Path

    async def lease(self) -> str:
        """Lease a local buildlet with ``lease create local`` and return its name; fail if the
        command does."""
        created = await self.cli("lease", "create", "local")
        assert created.code == 0, created.err
        return created.text.strip()


@pytest_twisted.async_fixture
async def farm(start_coordinator: StartCoordinator, tmp_path: Path) -> Farm:
    """A coordinator with the process provider and a CLI pointed at it."""
    running = await start_coordinator()
    env = clean_environment(tmp_path / "home")
    env.update(
        FARM_COORDINATOR_URL=running.url,
        FARM_USER="user-alice",
        FARM_KEY=keys.user_key(SECRET, "user-alice"),
    )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return Farm(running, Cli(env, cwd), cwd)


def assert_one_error_line(outcome: Outcome, *fragments: str) -> None:
    """Exit 2 with a single ``buildbot-farm: ...`` line on stderr containing each fragment."""
    assert outcome.code == 2, outcome
    assert outcome.err.startswith("buildbot-farm: "), outcome.err
    assert outcome.err.count("\n") == 1, outcome.err
    for fragment in fragments:
        assert fragment in outcome.err


def tree_of(root: Path) -> dict[str, object]:
    """Every entry under root: file contents, link targets, or "dir"."""
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[name] = ("link", os.readlink(path))
        elif path.is_dir():
            found[name] = "dir"
        else:
            found[name] = (path.read_bytes(), path.stat().st_mode & 0o777)
    return found


@pytest_twisted.ensureDeferred
async def test_create_list_run_ping_and_destroy(farm: Farm) -> None:
    """Create prints the name; list, run and ping use it; destroy ends the lease for good."""
    name = await farm.lease()
    assert name == "user-alice-local-0"

    listed = await farm.cli("lease", "list")
    assert listed.code == 0
    assert listed.text.split()[:2] == [name, "local"]

    hello = await farm.cli("lease", "run", name, "python3", "-c", "print('hi from the buildlet')")
    assert (hello.code, hello.out) == (0, b"hi from the buildlet\n")

    ping = await farm.cli("lease", "ping", name)
    assert ping.code == 0
    assert ping.text.startswith(f"{name}: alive, agent ")

    destroyed = await farm.cli("lease", "destroy", name)
    assert (destroyed.code, destroyed.out, destroyed.err) == (0, b"", "")
    assert (await farm.cli("lease", "list")).out == b""
    assert_one_error_line(await farm.cli("lease", "ping", name), "no live buildlet", "HTTP 502")


@pytest_twisted.ensureDeferred
async def test_run_streams_output_and_exits_with_the_remote_status(farm: Farm) -> None:
    """Output reaches stdout as the remote command writes it, and its exit status is ours."""
    name = await farm.lease()
    slow = await farm.cli(
        "lease", "run", name, "sh", "-c", "echo first; sleep 1.5; echo second; exit 3"
    )
    assert (slow.code, slow.out) == (3, b"first\nsecond\n")
    assert slow.arrivals[-1] - slow.arrivals[0] >= 1.2, "the output came all at once at the end"

    await farm.cli("lease", "run", name, "mkdir", "sub")
    placed = await farm.cli(
        "lease", "run", "--dir", "sub", "--env", "GREETING=hello", name,
        "sh", "-c", 'echo "$GREETING from $(basename "$PWD")"',
    )
    assert (placed.code, placed.out) == (0, b"hello from sub\n")

    killed = await farm.cli("lease", "run", name, "sh", "-c", "kill -9 $$")
    assert (killed.code, killed.err) == (
        137, "buildbot-farm: the remote command did not exit normally: signal: SIGKILL\n"
    )


@pytest_twisted.ensureDeferred
async def test_put_and_get_round_trip_a_file(farm: Farm) -> None:
    """put sends a file with its permissions and get brings back the same bytes; both report."""
    name = await farm.lease()
    content = os.urandom(3 * 1024 * 1024 + 17)
    local = farm.cwd / "tool"
    local.write_bytes(content)
    local.chmod(0o755)

    put = await farm.cli("lease", "put", name, "tool", "bin/tool")
    assert put.code == 0, put.err
    assert put.err.startswith("put bin/tool: 3.0 MiB in ")
    assert put.err.endswith("/s)\n")
    listed = await farm.cli("lease", "ls", name, "bin")
    assert listed.text.split()[0] == "-rwxr-xr-x"
    assert listed.text.split()[-1] == "tool"

    got = await farm.cli("lease", "get", name, "bin/tool", "back/copy")
    assert got.code == 0, got.err
    assert got.err.startswith("get bin/tool: 3.0 MiB in ")
    assert (farm.cwd / "back" / "copy").read_bytes() == content
    again = await farm.cli("lease", "get", name, "bin/tool", "back")
    assert again.code == 0
    assert (farm.cwd / "back" / "tool").read_bytes() == content

    missing = await farm.cli("lease", "get", name, "bin/nothing")
    assert_one_error_line(missing, "'bin/nothing' does not exist", "HTTP 404")
    assert sorted(p.name for p in farm.cwd.iterdir()) == ["back", "tool"], "a partial file stayed"


@pytest_twisted.ensureDeferred
async def test_puttar_and_gettar_round_trip_a_nested_tree(farm: Farm) -> None:
    """A tree with nested dirs, an empty dir, modes and a link comes back exactly as it went."""
    name = await farm.lease()
    source = farm.cwd / "src"
    (source / "deep" / "er").mkdir(parents=True)
    (source / "empty").mkdir()
    (source / "a.txt").write_text("alpha\n")
    (source / "deep" / "er" / "b.bin").write_bytes(os.urandom(200_000))
    (source / "deep" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (source / "deep" / "run.sh").chmod(0o755)
    (source / "link").symlink_to("a.txt")

    put = await farm.cli("lease", "puttar", name, "src")
    assert put.code == 0, put.err
    assert put.err.startswith("puttar src: ")
    ran = await farm.cli("lease", "run", name, "src/deep/run.sh")
    assert (ran.code, ran.out) == (0, b"ran\n")

    got = await farm.cli("lease", "gettar", name, "src", "back")
    assert got.code == 0, got.err
    assert got.err.startswith("gettar src: ")
    assert tree_of(farm.cwd / "back") == tree_of(source)

    refused = await farm.cli("lease", "gettar", name, "src", "back")
    assert_one_error_line(refused, "back: exists and is not an empty directory")
    assert tree_of(farm.cwd / "back") == tree_of(source)
    assert sorted(p.name for p in farm.cwd.iterdir()) == ["back", "src"], "staging stayed behind"


@pytest_twisted.ensureDeferred
async def test_ls_and_rm(farm: Farm) -> None:
    """ls lists the workdir recursively (with digests on request); rm removes files and trees."""
    name = await farm.lease()
    await farm.cli("lease", "run", name, "sh", "-c", "mkdir -p d/e && printf x > d/e/f && : > g")
    listed = await farm.cli("lease", "ls", name)
    assert [line.split()[-1] for line in listed.text.splitlines()] == ["d/", "d/e/", "d/e/f", "g"]
    digests = await farm.cli("lease", "ls", "--digest", name, "d/e")
    sha_of_x = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    assert digests.text.split()[-2:] == [sha_of_x, "f"]

    removed = await farm.cli("lease", "rm", name, "d", "g")
    assert removed.code == 0, removed.err
    assert (await farm.cli("lease", "ls", name)).out == b""
    assert_one_error_line(await farm.cli("lease", "rm", name, "../x"), "contains '..'")


@pytest_twisted.ensureDeferred
async def test_bad_key_or_unreachable_coordinator_is_one_line_and_exit_2(farm: Farm) -> None:
    """A wrong key and a coordinator that is not there each give one clear line and exit 2."""
    wrong = await farm.cli("lease", "list", env={**farm.cli.env, "FARM_KEY": "0" * 64})
    assert_one_error_line(wrong, "wrong key for user-alice", "HTTP 401")
    nowhere = f"http://127.0.0.1:{free_port()}"
    gone = await farm.cli("lease", "list", env={**farm.cli.env, "FARM_COORDINATOR_URL": nowhere})
    assert_one_error_line(
        gone, f"cannot reach the coordinator at {nowhere} (GET /buildlet/list): Connection was"
        " refused", "check the URL's host and port, and that the coordinator runs there",
    )


class _Page(resource.Resource):
    """Any path: 200 with an HTML page, as a web UI's catch-all answers."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"text/html")
        return b"<!DOCTYPE html>\n<html><body>\n<h1>Some web UI</h1>\n</body></html>\n"


@pytest_twisted.ensureDeferred
async def test_a_url_that_is_not_the_coordinator_says_what_to_check(farm: Farm) -> None:
    """An HTML 404 or a 200 page from another server is one line naming the request and the
    coordinator's usual URL, with no HTML in it."""
    missing = reactor.listenTCP(0, server.Site(pages.notFound()), interface="127.0.0.1")
    page = reactor.listenTCP(0, server.Site(_Page()), interface="127.0.0.1")
    try:
        for listening, answer in ((missing, "answered 404"), (page, "answered 200")):
            url = f"http://127.0.0.1:{listening.getHost().port}/"
            env = {**farm.cli.env, "FARM_COORDINATOR_URL": url}
            listed = await farm.cli("lease", "list", env=env)
            assert_one_error_line(
                listed, f"{url.rstrip('/')} {answer} to GET /buildlet/list",
                ": is this the coordinator's URL? it usually ends in /plugins/farm/coordinator",
            )
            assert "<" not in listed.err
            pinged = await farm.cli("lease", "ping", "user-alice-local-0", env=env)
            assert_one_error_line(pinged, f"{answer} to GET /status", "is this the coordinator")
    finally:
        await missing.stopListening()
        await page.stopListening()


@pytest_twisted.ensureDeferred
async def test_missing_settings_say_where_to_put_them(tmp_path: Path) -> None:
    """With no settings anywhere, the error names the variables and the file to put them in."""
    env = clean_environment(tmp_path / "home")
    cli = Cli(env, tmp_path)
    nothing = await cli("lease", "list")
    default_file = tmp_path / "home" / ".config" / "buildbot-farm" / "lease.ini"
    assert_one_error_line(
        nothing, "FARM_COORDINATOR_URL, FARM_USER, FARM_KEY", f"[coordinator] in {default_file}"
    )
    half = await cli("lease", "list", env={**env, "FARM_USER": "user-alice", "FARM_KEY": "k"})
    assert_one_error_line(half, "no coordinator url configured", "'url = ...'")
    absent = await cli("lease", "list", "--config", "nowhere.ini")
    assert_one_error_line(absent, "config file nowhere.ini does not exist")


@pytest_twisted.ensureDeferred
async def test_settings_file_is_read_and_the_environment_wins(farm: Farm, tmp_path: Path) -> None:
    """The default file supplies settings; a variable in the environment overrides the file."""
    env = clean_environment(tmp_path / "home")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    settings = tmp_path / "xdg" / "buildbot-farm" / "lease.ini"
    settings.parent.mkdir(parents=True)
    settings.write_text(
        f"[coordinator]\nurl = {farm.running.url}\nuser = user-alice\nkey = {'0' * 64}\n"
    )
    from_file = await farm.cli("lease", "list", env=env)
    assert_one_error_line(from_file, "wrong key for user-alice")
    right_key = {**env, "FARM_KEY": farm.cli.env["FARM_KEY"]}
    assert (await farm.cli("lease", "list", env=right_key)).code == 0

    (tmp_path / "typo.ini").write_text("[coordinator]\nurll = x\n")
    typo = await farm.cli("lease", "ls", "--config", str(tmp_path / "typo.ini"), "x", env=env)
    assert_one_error_line(typo, "unknown setting 'urll'")


@pytest_twisted.ensureDeferred
async def test_gettar_refuses_a_link_out_of_the_destination(farm: Farm) -> None:
    """A buildlet tree with a link leading out is refused whole; nothing is written locally."""
    name = await farm.lease()
    await farm.cli(
        "lease", "run", name, "sh", "-c", "mkdir out && echo ok > out/ok && ln -s ../../.. out/up"
    )
    refused = await farm.cli("lease", "gettar", name, "out")
    assert_one_error_line(refused, "refused the archive", "'up'")
    assert list(farm.cwd.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_key_prints_a_users_key(tmp_path: Path) -> None:
    """`key` prints the HMAC key the coordinator expects, and refuses a malformed user name."""
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    cli = Cli(clean_environment(tmp_path / "home"), tmp_path)
    printed = await cli("key", "user-alice", "--secret-file", str(secret_file))
    assert (printed.code, printed.text) == (0, keys.user_key(SECRET, "user-alice") + "\n")
    bad = await cli("key", "alice", "--secret-file", str(secret_file))
    assert_one_error_line(bad, "must look like 'user-NAME'")


def crafted_archive(path: Path, members: list[tuple[str, bytes, str, bytes]]) -> None:
    """Write a tar.gz holding exactly the given (name, type, link, data) members, however unsafe."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, link, data in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.size = kind, link, 0o644, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)


# Each escape aims at the test's tmp dir ("{tmp}"), from the destination's staging dir
# tmp/a/b/.dest.XXXX.part/tree, so that anything written outside would be found.
FILE, LINK, HARDLINK = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


@pytest.mark.parametrize(
    "members",
    [
        [("fine.txt", FILE, "", b"ok"), ("../../../../escape.txt", FILE, "", b"pwned")],
        [("fine.txt", FILE, "", b"ok"), ("{tmp}/escape.txt", FILE, "", b"pwned")],
        [("up", LINK, "../../../..", b""), ("up/escape.txt", FILE, "", b"pwned")],
        [("here", LINK, ".", b""), ("here/escape.txt", FILE, "", b"pwned")],
        [("fine.txt", FILE, "", b"ok"), ("passwd", HARDLINK, "{tmp}/evil.tgz", b"")],
        [("fifo", tarfile.FIFOTYPE, "", b"")],
    ],
    ids=["dotdot", "absolute", "link-out", "through-link", "hardlink-out", "fifo"],
)
def test_unpack_refuses_unsafe_archives_and_writes_nothing(
    tmp_path: Path, members: list[tuple[str, bytes, str, bytes]]
) -> None:
    """Escaping or special members make the whole unpack fail, leaving no trace anywhere."""
    archive = tmp_path / "evil.tgz"
    crafted_archive(archive, [
        (name.format(tmp=tmp_path), kind, link.format(tmp=tmp_path), data)
        for name, kind, link, data in members
    ])
    with pytest.raises(ArchiveError):
        transfers.unpack_tgz(archive, tmp_path / "a" / "b" / "dest")
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert left == ["a", "a/b", "evil.tgz"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_live_bar_on_a_terminal_and_one_line_elsewhere() -> None:
    """A terminal sees a redrawn bar with done/total and rate; a pipe sees only the last line."""
    now = [100.0]
    terminal, pipe = _Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        now[0] = 100.0
        with transfers.Progress("put x", stream, 4 * 1024 * 1024, clock=lambda: now[0]) as bar:
            for _ in range(4):
                now[0] += 0.5
                bar.advance(1024 * 1024)
    quarter = "\rput x: [######------------------]  25% 1.0 MiB / 4.0 MiB 2.0 MiB/s\x1b[K"
    assert quarter in terminal.getvalue()
    assert terminal.getvalue().count("\r") == 5
    assert terminal.getvalue().endswith("\rput x: 4.0 MiB in 2.0 s (2.0 MiB/s)\x1b[K\n")
    assert pipe.getvalue() == "put x: 4.0 MiB in 2.0 s (2.0 MiB/s)\n"


async def fill_the_pool(farm: Farm) -> list[str]:
    """Lease every buildlet of the farm's pool (max_count=2)."""
    return [await farm.lease(), await farm.lease()]


@pytest_twisted.ensureDeferred
async def test_create_waits_in_line_and_gets_the_first_buildlet_freed(farm: Farm) -> None:
    """On a full pool, create shows its place on stderr and prints the freed buildlet's name."""
    held = await fill_the_pool(farm)
    waiting = defer.ensureDeferred(farm.cli("lease", "create", "local"))
    deadline = time.monotonic() + 30
    while farm.running.coordinator.waiting("local") != 1:
        assert time.monotonic() < deadline, "the create never got in line"
        await deferLater(reactor, 0.02, lambda: None)
    destroyed = await farm.cli("lease", "destroy", held[0])
    assert destroyed.code == 0, destroyed.err
    created = await waiting
    assert created.code == 0, created.err
    assert created.text == "user-alice-local-2\n"
    assert created.err == "waiting for a local buildlet: next in line\n"


@pytest_twisted.ensureDeferred
async def test_create_gives_up_after_its_timeout_with_one_line(farm: Farm) -> None:
    """When nothing frees up within --timeout, create exits 2 with one line saying so."""
    await fill_the_pool(farm)
    started = time.monotonic()
    gave_up = await farm.cli("lease", "create", "--timeout", "1", "local")
    assert time.monotonic() - started >= 1
    place, error = gave_up.err.splitlines(keepends=True)
    assert place == "waiting for a local buildlet: next in line\n"
    assert_one_error_line(
        Outcome(gave_up.code, gave_up.out, error),
        "no buildlet of type local freed up within 1 s", "HTTP 503",
    )
    assert gave_up.out == b""
    at_once = await farm.cli("lease", "create", "--timeout", "0", "local")
    assert_one_error_line(at_once, "are in use", "HTTP 503")
    assert farm.running.coordinator.waiting("local") == 0
