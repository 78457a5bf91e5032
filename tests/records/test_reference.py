"""The reference build service's API, exactly, over loopback HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import pytest_twisted
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement
from twisted.web import server

from buildbot_farm import db
from buildbot_farm.artifacts import ArtifactRepository, Repository, open_repository
from buildbot_farm.records.api import BuildAlias
from buildbot_farm.records.config import BuildRecords
from buildbot_farm.web import FarmRoot
from tests.harness.twisted_reactor import reactor
from tests.records.farm import records_host
from tests.records.test_api import KEY, request

COMMIT = "53d6db9a88494e948b64415f53e1bf9da7efcc4b"
# The reference service's README record, byte for byte in meaning.
REFERENCE = {
    "Hostname": "localhost",
    "Architecture": "amd64",
    "GoVersion": "1.1.1",
    "SourceUrl": f"https://github.com/HailoOSS/build-service/commit/{COMMIT}",
    "BinaryUrl": "http://s3.amazon.com/abcdefg",
    "Version": "20130627091746",
    "Language": "Go",
    "Name": "com.HailoOSS.kernel.build-service",
    "TimeStamp": 1372346773,
}
AUTH = {"Authorization": f"Bearer {KEY}"}
DIGEST = "ab" * 32


@dataclass
class Served:
    """The records API on a loopback port, with the artifact repository it looks digests up in."""

    url: str
    repository: Repository


@pytest_twisted.async_yield_fixture
async def api(database: db.Database, tmp_path: Path) -> AsyncIterator[Served]:
    """``/builds`` and its alias ``/build`` served with an artifact repository on ``database``."""
    repository = await open_repository(
        ArtifactRepository(directory=str(tmp_path / "artifacts")), database, reactor,
        "test-master", "http://127.0.0.1:1/artifacts/",
    )
    endpoint, _farm = records_host(database, reactor, str(tmp_path), "b", repository)
    await endpoint.configure(BuildRecords(api_keys={"ci": KEY}))
    root = FarmRoot()
    root.mount("builds", endpoint.resource)
    root.mount("build", BuildAlias(endpoint.resource))
    port = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")
    yield Served(f"http://127.0.0.1:{port.getHost().port}/", repository)
    await port.stopListening()


async def post(api: Served, record: dict[str, Any]) -> dict[str, Any]:
    """Post ``record``; return the stored document (the POST must succeed)."""
    code, _, created = await request("POST", api.url + "builds", json=record, headers=AUTH)
    assert code == 201, created
    return dict(created)


def same_names_types_values(sent: dict[str, Any], answered: dict[str, Any]) -> None:
    """Every field of ``sent`` is in ``answered`` with an equal value of the same JSON type."""
    for key, value in sent.items():
        assert key in answered, f"{key} is missing from the answer"
        assert answered[key] == value, f"{key}: sent {value!r}, answered {answered[key]!r}"
        assert type(answered[key]) is type(value), f"{key}: the type changed"


@pytest_twisted.ensureDeferred
async def test_the_reference_record_round_trips(api: Served) -> None:
    """The reference's own record posts as it is and comes back, as posted, from every GET."""
    created = await post(api, REFERENCE)
    same_names_types_values(REFERENCE, created)
    name, version = REFERENCE["Name"], REFERENCE["Version"]
    for path in (f"builds/{name}/{version}", f"build/{name}/{version}"):
        code, _, fetched = await request("GET", api.url + path)
        assert code == 200, path
        same_names_types_values(REFERENCE, fetched)
    for path in ("builds", f"builds/{name}", f"build/{name}"):
        code, _, listed = await request("GET", api.url + path)
        assert code == 200, path
        assert isinstance(listed, list), f"{path} is not a JSON list"
        [only] = listed
        same_names_types_values(REFERENCE, only)
    assert created["timestamp"] == 1372346773
    assert isinstance(created["timestamp"], int)
    assert created["binaries"] == [
        {"url": REFERENCE["BinaryUrl"], "path": "", "size": None, "sha256": None}
    ]


@pytest_twisted.ensureDeferred
async def test_listings_page_with_a_link_header_to_the_end(api: Served) -> None:
    """GET /builds and /build/NAME are lists; following rel="next" visits every record once."""
    for n in range(7):
        await post(api, {"name": "paged", "version": f"1.{n}", "timestamp": 1000 + n})
    for start in ("builds?limit=3", "build/paged?limit=3"):
        url, seen, pages = api.url + start, [], 0
        while True:
            code, headers, page = await request("GET", url)
            assert code == 200
            assert isinstance(page, list)
            seen += [r["version"] for r in page]
            pages += 1
            links = headers.getRawHeaders("link") or []
            if not links:
                break
            [link] = links
            target, _, relation = link.partition(";")
            assert relation.strip() == 'rel="next"'
            url = urljoin(url, target.strip().strip("<>"))
        assert seen == [f"1.{n}" for n in reversed(range(7))], start
        assert pages == 3


@pytest.mark.parametrize(
    "source_url",
    [
        f"https://github.com/o/r/commit/{COMMIT}",
        f"https://gitlab.example.com/group/sub/r/-/commit/{COMMIT}",
        f"https://gitea.example.com/o/r/commit/{COMMIT}",
        f"https://bitbucket.org/o/r/commits/{COMMIT}",
        f"https://git.example.com/cgit/r.git/commit/?id={COMMIT}",
        f"https://git.example.com/gitweb/?p=r.git;a=commit;h={COMMIT}",
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_source_url_naming_a_commit_is_searchable_by_it(
    api: Served, source_url: str
) -> None:
    """Each forge's commit URL form, posted as SourceUrl, is found by ?commit=."""
    created = await post(api, {"Name": "forge", "Version": "1", "TimeStamp": 5,
                               "SourceUrl": source_url, "Language": "Go"})
    assert created["source"]["commit"] == COMMIT
    code, _, found = await request("GET", f"{api.url}builds?commit={COMMIT}")
    assert code == 200
    assert [r["SourceUrl"] for r in found] == [source_url]


@pytest_twisted.ensureDeferred
async def test_a_record_without_a_digest_has_no_provenance(api: Served) -> None:
    """A record whose binary has no sha256 says so, and its provenance answers 409."""
    await post(api, REFERENCE)
    path = f"builds/{REFERENCE['Name']}/{REFERENCE['Version']}/provenance"
    code, _, answer = await request("GET", api.url + path)
    assert code == 409
    assert "names no digest, so there is nothing to attest" in answer["error"]


@pytest_twisted.ensureDeferred
async def test_a_binary_in_the_farm_repository_gets_its_digest_from_the_index(
    api: Served,
) -> None:
    """A BinaryUrl inside the farm's repository is recorded with the index's size and sha256."""
    await api.repository.index.record("release/app/app.bin", "release/app", 42, DIGEST, None, None)
    created = await post(api, {**REFERENCE, "Version": "2",
                               "BinaryUrl": api.repository.public_url + "release/app/app.bin"})
    [binary] = created["binaries"]
    assert (binary["size"], binary["sha256"], binary["path"]) == (
        42, DIGEST, "release/app/app.bin")
    outside = await post(api, {**REFERENCE, "Version": "3"})
    assert outside["binaries"][0]["sha256"] is None


@pytest_twisted.ensureDeferred
async def test_toolchain_fields_belong_to_their_language(api: Served) -> None:
    """GoVersion appears for Go records only; others carry the general toolchain field."""
    python = await post(api, {"name": "py", "version": "1", "timestamp": 1,
                              "language": "python", "toolchain": "CPython 3.11.2"})
    assert "GoVersion" not in python
    assert python["toolchain"] == "CPython 3.11.2"
    go = await post(api, {**REFERENCE, "Version": "4"})
    assert go["GoVersion"] == go["toolchain"] == "1.1.1"


def validate_in_toto(envelope: dict[str, Any]) -> dict[str, Any]:
    """Validate a served envelope's statement and SLSA predicate with in-toto-attestation."""
    document = json.loads(base64.b64decode(envelope["payload"]))
    parsed = json_format.ParseDict(document, statement_pb2.Statement())
    Statement.copy_from_pb(parsed).validate()
    predicate = json_format.ParseDict(document["predicate"], provenance_pb2.Provenance())
    described = [
        *predicate.build_definition.resolved_dependencies, *predicate.run_details.byproducts
    ]
    for descriptor in described:
        ResourceDescriptor.copy_from_pb(descriptor).validate()
    return dict(document)


@pytest_twisted.ensureDeferred
async def test_every_provenance_statement_validates_with_in_toto_attestation(
    api: Served,
) -> None:
    """Each record with a digest has provenance that in-toto-attestation's validators accept."""
    binary = {"url": "https://dl.example/app", "size": 3, "sha256": DIGEST, "path": "app"}
    await post(api, REFERENCE)
    await post(api, {"name": "plain", "version": "1", "timestamp": 1, "binaries": [binary]})
    await post(api, {
        "name": "rich", "version": "1", "timestamp": 2.5, "language": "python",
        "sourceUrl": f"https://github.com/o/r/commit/{COMMIT}", "buildUrl": "https://b/1",
        "environment": {"arch": "x86_64", "cores": 2},
        "binaries": [binary, {"url": "https://dl.example/unknown"}],
        "byproducts": [{"url": "https://dl.example/t.tar.zst", "size": 9, "sha256": DIGEST,
                        "path": "container/rich/1/t.tar.zst"}],
    })
    await post(api, {**REFERENCE, "Version": "5", "BinaryUrl": binary["url"],
                     "binaries": [binary]})
    code, _, listed = await request("GET", api.url + "builds")
    assert code == 200
    served = 0
    for record in listed:
        path = f"builds/{record['name']}/{record['version']}/provenance"
        code, _, envelope = await request("GET", api.url + path)
        if not any(b["sha256"] for b in record["binaries"]):
            assert code == 409
            continue
        assert code == 200, envelope
        document = validate_in_toto(envelope)
        assert [s["digest"]["sha256"] for s in document["subject"]] == [DIGEST]
        served += 1
        if record["name"] == "rich":
            run = document["predicate"]["runDetails"]
            assert [b["name"] for b in run["byproducts"]] == ["container/rich/1/t.tar.zst"]
    assert served == 3
