"""Bad input over real HTTP: path escapes, bad tokens, oversize, cut-off, bad digests, full disk."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import endpoints, protocol, task

from tests.artifacts.conftest import RunningRepository, StartRepository, basic, curl
from tests.harness.twisted_reactor import reactor

PAYLOAD = b"x" * 150_000


def visible_files(root: Path) -> list[str]:
    """Every file under the storage root, temporary files included, as relative paths."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def auth_args(repo: RunningRepository) -> list[str]:
    """curl arguments giving build 7's token as Basic credentials."""
    return ["-u", f"build-7:{await repo.token()}"]


@pytest.mark.parametrize(
    "path",
    [
        "bin/hello/3/../4/f",
        "bin/hello/3/%2e%2e/4/f",
        "bin/hello/3/%2E%2E%2F4/f",
        "bin/hello/3/a%2Fb",
        "bin/hello/3/a%5Cb",
        "bin/hello/3/..%5C4",
        "bin/hello/3/%00x",
        "bin/hello/3//etc/passwd",
        "bin/hello/3/.farm-tmp",
    ],
)
@pytest_twisted.ensureDeferred
async def test_path_escapes_are_refused(start_repository: StartRepository, path: str) -> None:
    """Dot segments, encoded dots/slashes/backslashes, NUL and empty segments answer 400."""
    repo = await start_repository()
    args = await auth_args(repo)
    status, body = await curl(*args, "-T", "/etc/hostname", repo.url + path)
    assert status == 400, body
    assert "unsafe path" in body
    status, _ = await curl(repo.url + path)
    assert status == 400
    assert visible_files(repo.root) == []


@pytest_twisted.ensureDeferred
async def test_absolute_url_paths_stay_in_the_repository(start_repository: StartRepository) -> None:
    """A request-target of //etc/passwd or an absolute-form URL cannot name a host file."""
    repo = await start_repository()
    status, _ = await curl(repo.url + "/etc/passwd")
    assert status == 400
    status, body = await curl(repo.url + "etc/passwd")
    assert status == 404, body


@pytest_twisted.ensureDeferred
async def test_symlinks_in_storage_are_not_followed(
    start_repository: StartRepository, tmp_path: Path
) -> None:
    """A symbolic link planted in the storage is neither read through nor written through."""
    repo = await start_repository()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("TOP-SECRET")
    (repo.root / "bin/hello/3").mkdir(parents=True)
    (repo.root / "bin/hello/3/evil").symlink_to(outside)
    (repo.root / "bin/hello/3/evil-file").symlink_to(outside / "secret")
    status, body = await curl(repo.url + "bin/hello/3/evil/secret")
    assert status == 403
    assert "TOP-SECRET" not in body
    assert (await curl(repo.url + "bin/hello/3/evil-file"))[0] == 403
    args = await auth_args(repo)
    status, _ = await curl(*args, "-T", "/etc/hostname", repo.url + "bin/hello/3/evil/new")
    assert status == 403
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    listing = (await repo.request("GET", "bin/hello/3/?format=json")).json()
    assert listing["entries"] == []


@pytest_twisted.ensureDeferred
async def test_wrong_expired_revoked_and_foreign_tokens(start_repository: StartRepository) -> None:
    """Unknown, expired, revoked and other builds' tokens are 401; out of scope is 403."""
    repo = await start_repository()
    mine = await repo.token(build_id=7, project="hello", build=3)
    other = await repo.token(build_id=8, project="hello", build=4)
    url = repo.url + "bin/hello/3/f"
    for user, token in [("build-7", "guess"), ("build-8", mine), ("someone", mine)]:
        status, body = await curl("-u", f"{user}:{token}", "-T", "/etc/hostname", url)
        assert status == 401, (user, body)
    status, body = await curl("-T", "/etc/hostname", url)
    assert status == 401
    assert "build-ID:TOKEN" in body
    status, body = await curl("-u", f"build-8:{other}", "-T", "/etc/hostname", url)
    assert status == 403, body
    status, body = await curl("-u", f"build-7:{mine}", "-T", "/etc/hostname",
                              repo.url + "bin/other/3/f")
    assert status == 403
    assert (await curl("-u", f"build-7:{mine}", "-X", "DELETE", repo.url + "bin/"))[0] == 403
    await repo.repository.index.revoke_build(8)
    status, body = await curl("-u", f"build-8:{other}", "-T", "/etc/hostname",
                              repo.url + "bin/hello/4/f")
    assert status == 401
    assert "revoked" in body
    # A token of its own expires: the others' checks may take longer than its life.
    brief = await repo.repository.index.mint(7, repo.repository.token_scope("hello", 3), 0.3)
    await task.deferLater(reactor, 0.4, lambda: None)
    status, body = await curl("-u", f"build-7:{brief}", "-T", "/etc/hostname", url)
    assert status == 401
    assert "expired" in body
    assert visible_files(repo.root) == []


@pytest_twisted.ensureDeferred
async def test_oversize_uploads_are_413_with_nothing_left(
    start_repository: StartRepository, tmp_path: Path
) -> None:
    """Above max_upload_size, with or without Content-Length, the answer is 413 and no file."""
    repo = await start_repository(max_upload_size=100_000)
    big = tmp_path / "big"
    big.write_bytes(PAYLOAD)
    args = await auth_args(repo)
    status, _ = await curl(*args, "-T", str(big), repo.url + "bin/hello/3/big")
    assert status == 413
    status, _ = await curl(*args, "-H", "Transfer-Encoding: chunked", "-T", str(big),
                           repo.url + "bin/hello/3/big")
    assert status == 413
    assert visible_files(repo.root) == []


@pytest_twisted.ensureDeferred
async def test_digest_headers_are_verified(start_repository: StartRepository) -> None:
    """A wrong client digest is 400 and stores nothing; a right one is accepted."""
    repo = await start_repository()
    auth = basic(7, await repo.token())
    right = hashlib.sha256(PAYLOAD).digest()
    wrong = hashlib.sha256(b"other").digest()
    for header in (
        {b"digest": b"SHA-256=" + base64.b64encode(wrong)},
        {b"content-digest": b"sha-256=:" + base64.b64encode(wrong) + b":"},
        {b"x-checksum-sha256": wrong.hex().encode()},
        {b"x-checksum-sha256": b"nothex"},
    ):
        answer = await repo.request("PUT", "bin/hello/3/f", data=PAYLOAD,
                                    headers={**auth, **header})
        assert answer.code == 400, header
    assert visible_files(repo.root) == []
    answer = await repo.request(
        "PUT", "bin/hello/3/f", data=PAYLOAD,
        headers={**auth, b"content-digest": b"sha-256=:" + base64.b64encode(right) + b":"},
    )
    assert answer.code == 201


class _HalfUpload(protocol.Protocol):
    """Sends a PUT announcing more bytes than it sends, then hangs up."""

    transport: Any  # an ITCPTransport once connected

    def __init__(self, request: bytes) -> None:
        self.request = request

    def connectionMade(self) -> None:
        """Send the truncated request and close the connection."""
        assert self.transport is not None
        self.transport.write(self.request)
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_an_upload_cut_off_leaves_nothing_and_the_retry_works(
    start_repository: StartRepository,
) -> None:
    """A connection lost half-way through a PUT stores nothing; the same PUT again succeeds."""
    repo = await start_repository()
    token = await repo.token()
    auth = basic(7, token)[b"authorization"]
    head = (
        b"PUT /farm/artifacts/bin/hello/3/cut HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: " + auth + b"\r\nContent-Length: %d\r\n\r\n" % len(PAYLOAD)
    )
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", repo.port.getHost().port)
    await endpoints.connectProtocol(endpoint, _HalfUpload(head + PAYLOAD[: len(PAYLOAD) // 2]))
    await task.deferLater(reactor, 0.3, lambda: None)
    assert (await repo.request("GET", "bin/hello/3/cut")).code == 404
    assert visible_files(repo.root) == []
    retry = await repo.request("PUT", "bin/hello/3/cut", data=PAYLOAD, headers=basic(7, token))
    assert retry.code == 201
    assert (await repo.request("GET", "bin/hello/3/cut")).body == PAYLOAD


@pytest_twisted.ensureDeferred
async def test_a_full_disk_is_507_with_nothing_partial(
    start_repository: StartRepository, tmp_path: Path
) -> None:
    """On a full file system (a 64 KiB tmpfs) a PUT answers 507 and leaves no partial file."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode:
        pytest.fail(f"this test needs to mount a tmpfs (run as root): {mounted.stderr}")
    try:
        repo = await start_repository(root=small / "artifacts")
        answer = await repo.request("PUT", "bin/hello/3/big", data=PAYLOAD,
                                    headers=basic(7, await repo.token()))
        assert answer.code == 507, answer.body
        assert "full" in answer.json()["error"]
        assert visible_files(repo.root) == []
        assert (await repo.request("GET", "bin/hello/3/big")).code == 404
    finally:
        subprocess.run(["umount", str(small)], check=True)
