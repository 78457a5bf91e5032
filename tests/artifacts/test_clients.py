"""Real WebDAV and HTTP clients against the repository: curl, litmus, rclone."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest_twisted

from tests.artifacts.conftest import StartRepository, curl, run


@pytest_twisted.ensureDeferred
async def test_curl_upload_head_and_resume(
    start_repository: StartRepository, tmp_path: Path
) -> None:
    """curl -T uploads; curl -I shows length and ETag; curl -C - resumes a download by Range."""
    repo = await start_repository()
    token = await repo.token()
    data = tmp_path / "app.bin"
    data.write_bytes(bytes(range(256)) * 4096)
    status, body = await curl("-u", f"build-7:{token}", "-T", str(data),
                              repo.url + "bin/hello/3/app.bin")
    assert status == 201, body
    status, head = await curl("-I", repo.url + "bin/hello/3/app.bin")
    assert status == 200
    headers = head.lower()
    assert f"content-length: {data.stat().st_size}" in headers
    assert f'etag: "{hashlib.sha256(data.read_bytes()).hexdigest()}"' in headers
    assert "content-encoding" not in headers
    partial = tmp_path / "partial.bin"
    partial.write_bytes(data.read_bytes()[:300_000])
    status, _ = await curl("-C", "-", "-o", str(partial), repo.url + "bin/hello/3/app.bin")
    assert status == 206
    assert partial.read_bytes() == data.read_bytes()


@pytest_twisted.ensureDeferred
async def test_litmus_basic_suite(start_repository: StartRepository, tmp_path: Path) -> None:
    """litmus's basic WebDAV suite passes in full with a build token, inside its scope."""
    repo = await start_repository()
    token = await repo.token()
    code, output = await run("litmus", repo.url + "bin/hello/3/", "build-7", token,
                             env={"TESTS": "basic"}, cwd=tmp_path)
    assert code == 0, output
    assert "of 16 tests run: 16 passed, 0 failed" in output, output


@pytest_twisted.ensureDeferred
async def test_rclone_webdav_copies_up_and_down(
    start_repository: StartRepository, tmp_path: Path
) -> None:
    """rclone's webdav backend uploads a tree with the token and downloads it anonymously."""
    repo = await start_repository()
    token = await repo.token()
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("a" * 5000)
    (source / "sub" / "b.bin").write_bytes(b"\x00\x01" * 70_000)
    code, obscured = await run("rclone", "obscure", token)
    assert code == 0, obscured
    remote = (f":webdav,url='{repo.url}',user=build-7,pass='{obscured.strip()}',"
              "vendor=other:bin/hello/3")
    code, output = await run("rclone", "copy", "--config", "/dev/null", str(source), remote)
    assert code == 0, output
    anonymous = f":webdav,url='{repo.url}',vendor=other:bin/hello/3"
    back = tmp_path / "back"
    code, output = await run("rclone", "copy", "--config", "/dev/null", anonymous, str(back))
    assert code == 0, output
    assert (back / "a.txt").read_text() == "a" * 5000
    assert (back / "sub" / "b.bin").read_bytes() == b"\x00\x01" * 70_000
