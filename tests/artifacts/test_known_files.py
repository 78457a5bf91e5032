"""GETs of files the in-memory index knows: answered without the storage's thread-pool
calls, loaded at start, kept in step with writes and deletes, and as safe as the slow way
(symbolic links on the way or as the name, files changed behind the repository's back)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from buildbot_farm.artifacts import kernel_send
from tests.artifacts.conftest import RunningRepository, StartRepository, basic, curl


def count_storage_calls(repo: RunningRepository) -> list[str]:
    """Record each call of the storage's stat and digest (the slow way's thread work)."""
    calls: list[str] = []
    storage: Any = repo.repository.storage
    for name in ("thd_stat", "thd_digest"):
        original = getattr(storage, name)

        def counted(*args: Any, _name: str = name, _original: Any = original) -> Any:
            calls.append(_name)
            return _original(*args)

        setattr(storage, name, counted)
    return calls


async def upload(repo: RunningRepository, path: str, data: bytes) -> None:
    """PUT ``data`` at ``path`` with the default build's token."""
    answer = await repo.request("PUT", path, data=data, headers=basic(7, await repo.token()))
    assert answer.code in (201, 204), answer.body


@pytest_twisted.ensureDeferred
async def test_known_file_needs_no_storage_call(start_repository: StartRepository) -> None:
    """An uploaded file is answered from memory, with the slow way's headers and 304s."""
    repo = await start_repository()
    data = os.urandom(1024)
    await upload(repo, "bin/hello/3/app.tar.gz", data)
    calls = count_storage_calls(repo)
    got = await repo.request("GET", "bin/hello/3/app.tar.gz")
    assert got.code == 200
    assert got.body == data
    assert got.header("etag") == f'"{hashlib.sha256(data).hexdigest()}"'
    assert got.length == 1024
    assert got.header("content-type") == "application/x-tar"
    assert got.header("last-modified") is not None
    status, head = await curl("-I", repo.url + "bin/hello/3/app.tar.gz")
    assert status == 200
    assert "content-length: 1024" in head.lower()
    assert "content-encoding" not in head.lower()
    cached = await repo.request("GET", "bin/hello/3/app.tar.gz",
                                headers={"if-none-match": got.header("etag")})
    assert cached.code == 304
    assert calls == []
    ranged = await repo.request("GET", "bin/hello/3/app.tar.gz", headers={"range": "bytes=0-9"})
    assert ranged.code == 206
    assert ranged.body == data[:10]
    assert calls == ["thd_stat"]


@pytest_twisted.ensureDeferred
async def test_index_is_loaded_at_start_and_follows_deletes(
    start_repository: StartRepository,
) -> None:
    """A repository opened on an existing index knows its files; a DELETE forgets them."""
    first = await start_repository()
    await upload(first, "bin/hello/3/a.txt", b"alpha")
    second = await start_repository(root=first.root)
    assert second.repository.known.get("bin/hello/3/a.txt") is not None
    calls = count_storage_calls(second)
    assert (await second.request("GET", "bin/hello/3/a.txt")).body == b"alpha"
    assert calls == []
    gone = await second.request("DELETE", "bin/hello/3/", headers=basic(7, await second.token()))
    assert gone.code == 204
    assert second.repository.known.get("bin/hello/3/a.txt") is None
    assert (await second.request("GET", "bin/hello/3/a.txt")).code == 404


@pytest_twisted.ensureDeferred
async def test_symbolic_links_are_refused_for_known_files(
    start_repository: StartRepository, tmp_path: Path
) -> None:
    """A known file's directory or name replaced by a symbolic link is 403, as before."""
    repo = await start_repository()
    await upload(repo, "bin/hello/3/d/a.txt", b"alpha")
    await upload(repo, "bin/hello/3/b.txt", b"bravo")
    outside = tmp_path / "outside"
    shutil.move(repo.root / "bin/hello/3/d", outside)
    (outside / "a.txt").write_bytes(b"ALPHA")
    (repo.root / "bin/hello/3/d").symlink_to(outside)
    answer = await repo.request("GET", "bin/hello/3/d/a.txt")
    assert answer.code == 403
    assert b"ALPHA" not in answer.body
    (repo.root / "bin/hello/3/b.txt").unlink()
    (repo.root / "bin/hello/3/b.txt").symlink_to(outside / "a.txt")
    answer = await repo.request("GET", "bin/hello/3/b.txt")
    assert answer.code == 403
    assert b"ALPHA" not in answer.body


@pytest_twisted.ensureDeferred
async def test_files_changed_behind_the_repository_are_rehashed(
    start_repository: StartRepository,
) -> None:
    """A known file replaced on disk (another size) gets its new digest; a removed one 404."""
    repo = await start_repository()
    await upload(repo, "bin/hello/3/a.txt", b"alpha")
    assert (await repo.request("GET", "bin/hello/3/a.txt")).body == b"alpha"
    (repo.root / "bin/hello/3/a.txt").write_bytes(b"alphabet")
    changed = await repo.request("GET", "bin/hello/3/a.txt")
    assert changed.body == b"alphabet"
    assert changed.header("etag") == f'"{hashlib.sha256(b"alphabet").hexdigest()}"'
    calls = count_storage_calls(repo)
    assert (await repo.request("GET", "bin/hello/3/a.txt")).body == b"alphabet"
    assert calls == []
    (repo.root / "bin/hello/3/a.txt").unlink()
    assert (await repo.request("GET", "bin/hello/3/a.txt")).code == 404
    assert repo.repository.known.get("bin/hello/3/a.txt") is None


@pytest_twisted.ensureDeferred
async def test_large_known_files_are_sent_by_sendfile(
    start_repository: StartRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A known file above SMALL_FILE goes out by sendfile, whole and intact."""
    sent: list[int] = []
    original = kernel_send.send_in_thread

    def counted(reactor: Any, source: int, target: int, offset: int, length: int) -> Any:
        sent.append(length)
        return original(reactor, source, target, offset, length)

    monkeypatch.setattr(kernel_send, "send_in_thread", counted)
    repo = await start_repository()
    data = os.urandom(3 * 1024 * 1024 + 17)
    await upload(repo, "bin/hello/3/big.bin", data)
    got = await repo.request("GET", "bin/hello/3/big.bin")
    assert got.code == 200
    assert got.body == data
    assert got.header("etag") == f'"{hashlib.sha256(data).hexdigest()}"'
    again = await repo.request("GET", "bin/hello/3/big.bin")
    assert again.body == data
    assert sent == [len(data), len(data)]
