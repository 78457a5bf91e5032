"""The repository over real HTTP on loopback: downloads, uploads, WebDAV methods."""

from __future__ import annotations

import hashlib

import pytest_twisted

from tests.artifacts.conftest import StartRepository, basic

PAYLOAD = b"hello artifact\n" * 1000
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest_twisted.ensureDeferred
async def test_put_then_get_with_etag_length_and_range(start_repository: StartRepository) -> None:
    """An upload with the build's token is served to anyone with its sha256 as ETag and ranges."""
    repo = await start_repository()
    token = await repo.token()
    put = await repo.request("PUT", "bin/hello/3/a/b.txt", data=PAYLOAD, headers=basic(7, token))
    assert put.code == 201, put.body
    assert put.json()["sha256"] == SHA
    assert put.header("location") == repo.url + "bin/hello/3/a/b.txt"
    got = await repo.request("GET", "bin/hello/3/a/b.txt")
    assert got.code == 200
    assert got.body == PAYLOAD
    assert got.header("etag") == f'"{SHA}"'
    assert got.length == len(PAYLOAD)
    assert got.header("last-modified")
    assert got.header("content-type") == "text/plain"
    ranged = await repo.request("GET", "bin/hello/3/a/b.txt", headers={b"range": b"bytes=6-13"})
    assert ranged.code == 206
    assert ranged.body == b"artifact"
    head = await repo.request("HEAD", "bin/hello/3/a/b.txt")
    assert head.code == 200
    assert head.body == b""
    cached = await repo.request("GET", "bin/hello/3/a/b.txt",
                                headers={b"if-none-match": f'"{SHA}"'.encode()})
    assert cached.code == 304


@pytest_twisted.ensureDeferred
async def test_listings_in_json_and_html(start_repository: StartRepository) -> None:
    """A collection lists its entries with size, sha256, time and URL, as JSON or HTML."""
    repo = await start_repository()
    token = await repo.token()
    await repo.request("PUT", "bin/hello/3/x.bin", data=PAYLOAD, headers=basic(7, token))
    await repo.request("PUT", "bin/hello/3/sub/y.bin", data=b"y", headers=basic(7, token))
    listing = await repo.request("GET", "bin/hello/3/?format=json")
    assert listing.code == 200
    entries = {e["name"]: e for e in listing.json()["entries"]}
    assert entries["x.bin"]["sha256"] == SHA
    assert entries["x.bin"]["size"] == len(PAYLOAD)
    assert entries["x.bin"]["url"] == repo.url + "bin/hello/3/x.bin"
    assert entries["sub"]["type"] == "collection"
    by_accept = await repo.request("GET", "bin/hello/3/", headers={b"accept": b"application/json"})
    assert by_accept.json() == listing.json()
    page = await repo.request("GET", "bin/hello/3/")
    assert page.header("content-type") == "text/html; charset=utf-8"
    assert f'href="{repo.url}bin/hello/3/x.bin"'.encode() in page.body
    assert SHA.encode() in page.body


@pytest_twisted.ensureDeferred
async def test_mkcol_propfind_and_delete(start_repository: StartRepository) -> None:
    """MKCOL creates, PROPFIND depth 0/1 describes and DELETE removes, inside the scope."""
    repo = await start_repository()
    auth = basic(7, await repo.token())
    made = await repo.request("MKCOL", "dpkg/hello/3/", headers=auth)
    assert made.code == 201, made.body
    assert (await repo.request("MKCOL", "dpkg/hello/3/", headers=auth)).code == 405
    assert (await repo.request("MKCOL", "dpkg/hello/3/no/parent/", headers=auth)).code == 409
    await repo.request("PUT", "dpkg/hello/3/p.deb", data=PAYLOAD, headers=auth)
    zero = await repo.request("PROPFIND", "dpkg/hello/3/", headers={b"depth": b"0"})
    assert zero.code == 207
    assert zero.body.count(b"<D:response>") == 1
    one = await repo.request("PROPFIND", "dpkg/hello/3/", headers={b"depth": b"1"})
    assert one.body.count(b"<D:response>") == 2
    assert f'<D:getetag>"{SHA}"</D:getetag>'.encode() in one.body
    assert b"<D:href>/farm/artifacts/dpkg/hello/3/p.deb</D:href>" in one.body
    infinite = await repo.request("PROPFIND", "dpkg/hello/3/")
    assert infinite.code == 403
    options = await repo.request("OPTIONS", "dpkg/hello/3/")
    assert options.header("dav") == "1"
    assert (await repo.request("DELETE", "dpkg/hello/3/p.deb", headers=auth)).code == 204
    assert (await repo.request("GET", "dpkg/hello/3/p.deb")).code == 404
    assert (await repo.request("DELETE", "dpkg/hello/3/p.deb", headers=auth)).code == 404
    assert (await repo.request("DELETE", "dpkg/hello/3/", headers=auth)).code == 204
    assert not (repo.root / "dpkg/hello/3").exists()


@pytest_twisted.ensureDeferred
async def test_bearer_works_and_existing_files_stay(start_repository: StartRepository) -> None:
    """A Bearer token uploads too; a second PUT of the same path is refused (immutable)."""
    repo = await start_repository()
    bearer = {b"authorization": b"Bearer " + (await repo.token()).encode()}
    assert (await repo.request("PUT", "bin/hello/3/f", data=b"one", headers=bearer)).code == 201
    again = await repo.request("PUT", "bin/hello/3/f", data=b"two", headers=bearer)
    assert again.code == 409
    assert "immutable" in again.json()["error"]
    assert (await repo.request("GET", "bin/hello/3/f")).body == b"one"


@pytest_twisted.ensureDeferred
async def test_overwrite_when_configured(start_repository: StartRepository) -> None:
    """With allow_overwrite a second PUT replaces the file (204) and the ETag follows."""
    repo = await start_repository(allow_overwrite=True)
    auth = basic(7, await repo.token())
    await repo.request("PUT", "bin/hello/3/f", data=b"one", headers=auth)
    again = await repo.request("PUT", "bin/hello/3/f", data=b"two", headers=auth)
    assert again.code == 204
    got = await repo.request("GET", "bin/hello/3/f")
    assert got.body == b"two"
    assert got.header("etag") == f'"{hashlib.sha256(b"two").hexdigest()}"'
