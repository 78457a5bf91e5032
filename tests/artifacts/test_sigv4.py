"""AWS Signature Version 4 against the example values AWS publishes for S3 and IAM."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from buildbot_farm.artifacts import sigv4

EXAMPLE = sigv4.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                            "us-east-1")
MAY_24_2013 = datetime(2013, 5, 24, tzinfo=timezone.utc)
HOST = {"host": "examplebucket.s3.amazonaws.com"}


def signature(headers: dict[str, str]) -> str:
    """The Signature= part of a signed request's Authorization header."""
    return headers["authorization"].rpartition("Signature=")[2]


def test_signing_key_matches_the_published_derivation() -> None:
    """The key derived for 20120215/us-east-1/iam is the one AWS's documentation shows."""
    key = sigv4.signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1",
                            "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_get_object_with_range_matches_the_s3_example() -> None:
    """GET /test.txt with Range: bytes=0-9 signs to S3's published example signature."""
    signed = sigv4.sign(EXAMPLE, "GET", "/test.txt", [], {**HOST, "range": "bytes=0-9"},
                        sigv4.EMPTY_SHA256, MAY_24_2013)
    assert signed["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
    assert signed["x-amz-date"] == "20130524T000000Z"
    assert signed["x-amz-content-sha256"] == sigv4.EMPTY_SHA256


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ([("max-keys", "2"), ("prefix", "J")],
         "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
        ([("prefix", "J"), ("max-keys", "2")],
         "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"),
        ([("lifecycle", "")],
         "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"),
    ],
)
def test_bucket_requests_with_queries_match_the_s3_examples(
    query: list[tuple[str, str]], expected: str
) -> None:
    """ListObjects (in any parameter order) and GET ?lifecycle sign as S3's examples do."""
    signed = sigv4.sign(EXAMPLE, "GET", "/", query, HOST, sigv4.EMPTY_SHA256, MAY_24_2013)
    assert signature(signed) == expected


def test_paths_are_encoded_once_keeping_slashes() -> None:
    """Reserved characters in a key are percent-encoded, '/' and '-_.~' are kept."""
    text, signed = sigv4.canonical_request(
        "PUT", "/b/a b+c~d=é/x", [("k", "a b")], {"Host": "h", "X-Amz-Date": "  t  1 "}, "p"
    )
    assert text.splitlines()[:5] == [
        "PUT", "/b/a%20b%2Bc~d%3D%C3%A9/x", "k=a%20b", "host:h", "x-amz-date:t 1",
    ]
    assert signed == "host;x-amz-date"
