"""Path safety, scopes, layouts, credentials, digests and settings: pure logic, no I/O."""

from __future__ import annotations

import base64
import hashlib

import pytest

from buildbot_farm.artifacts import ArtifactRepository, paths, tokens
from buildbot_farm.service import FarmSettings


@pytest.mark.parametrize(
    "raw", [[b".."], [b"%2e%2E"], [b"a%2fb"], [b"a%5cb"], [b"%00"], [b"a", b"", b"b"],
            [b".farm-auth"], [b"\xff"], [b"%ff"]],
)
def test_escaping_segments_are_refused(raw: list[bytes]) -> None:
    """Dot segments, encoded slashes, backslashes, NUL, empty and reserved names are unsafe."""
    with pytest.raises(paths.UnsafePath):
        paths.split_request_path(raw)


def test_segments_are_decoded_once() -> None:
    """A double-encoded dot stays a literal name; a trailing slash marks a collection."""
    assert paths.split_request_path([b"a", b"%252e%252e", b""]) == (("a", "%2e%2e"), True)
    assert paths.split_request_path([b"caf%C3%A9"]) == (("café",), False)


def test_scopes_match_one_segment_per_star() -> None:
    """A scope */p/3 allows any kind of build 3 of p and nothing above or beside it."""
    scope = ("*", "p", "3")
    assert paths.scope_allows(scope, ("bin", "p", "3", "x"))
    assert paths.scope_allows(scope, ("dpkg", "p", "3"))
    assert not paths.scope_allows(scope, ("bin", "p"))
    assert not paths.scope_allows(scope, ("bin", "p", "4", "x"))


def test_layouts_render_and_are_checked() -> None:
    """The layout fills one segment per value; bad values and templates are refused."""
    assert paths.render_layout("{kind}/{project}/{build}", {"kind": "bin", "project": "p",
                                                             "build": 3}) == ("bin", "p", "3")
    with pytest.raises(paths.UnsafePath):
        paths.render_layout("{kind}/{project}/{build}", {"kind": "..", "project": "p",
                                                          "build": 1})
    with pytest.raises(paths.UnsafePath):
        paths.render_layout("{project}/{build}", {"project": "a/b", "build": 1})
    assert paths.layout_problems("{project}") != []
    assert paths.layout_problems("{project}/{build}") == []


def test_credentials_parse_as_basic_or_bearer() -> None:
    """Basic build-ID:TOKEN carries the build id, Bearer only the token; others are refused."""
    basic = b"Basic " + base64.b64encode(b"build-12:tok")
    assert tokens.parse_authorization(basic) == tokens.Credentials("tok", 12)
    assert tokens.parse_authorization(b"Bearer tok") == tokens.Credentials("tok", None)
    assert tokens.parse_authorization(None) is None
    for bad in (b"Digest x", b"Basic !!!", b"Basic " + base64.b64encode(b"admin:tok")):
        with pytest.raises(tokens.BadCredentials):
            tokens.parse_authorization(bad)


def test_tokens_are_random_and_stored_hashed() -> None:
    """Each token is new, and its stored form is its sha256, not the token."""
    first, second = tokens.new_token(), tokens.new_token()
    assert first != second
    # 256 bits, and never a leading "-" that a command line (litmus, rclone) takes for an option
    assert all(len(t) == 64 and set(t) <= set("0123456789abcdef") for t in (first, second))
    assert tokens.token_hash(first) == hashlib.sha256(first.encode()).hexdigest()


def test_client_digests_in_three_spellings() -> None:
    """Content-Digest, Digest and X-Checksum-Sha256 give the same hex sha256."""
    digest = hashlib.sha256(b"x").digest()
    b64 = base64.b64encode(digest)
    assert tokens.client_sha256({"content-digest": b"sha-256=:" + b64 + b":"}) == digest.hex()
    assert tokens.client_sha256({"digest": b"MD5=abc, SHA-256=" + b64}) == digest.hex()
    assert tokens.client_sha256({"x-checksum-sha256": digest.hex().encode()}) == digest.hex()
    assert tokens.client_sha256({"digest": b"md5=abc"}) is None
    with pytest.raises(tokens.BadDigest):
        tokens.client_sha256({"digest": b"sha-256=abc"})


def test_repository_settings_are_checked_by_name() -> None:
    """Every bad ArtifactRepository argument is reported, and FarmService passes them on."""
    bad = ArtifactRepository(directory="", public_url="ftp://x", layout="{kind}",
                             max_upload_size=0, token_ttl=-1, retention={"../x": 0})
    problems = "\n".join(bad.problems())
    for name in ("directory", "public_url", "{build}", "max_upload_size", "token_ttl",
                 "retention prefix", "retention for"):
        assert name in problems
    assert ArtifactRepository().problems() == []
    assert FarmSettings(artifacts="yes").problems() == [  # type: ignore[arg-type]
        "artifacts must be a util.ArtifactRepository(...)"
    ]


def test_retention_takes_the_longest_prefix() -> None:
    """The longest retention prefix matching a build directory decides; none: kept forever."""
    config = ArtifactRepository(retention={"": 100, "bin/nightly": 10})
    assert config.retention_for("bin/nightly/4") == 10
    assert config.retention_for("dpkg/x/4") == 100
    assert ArtifactRepository().retention_for("bin/x/1") is None
