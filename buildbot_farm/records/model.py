"""A build record, its validation field by field, and its JSON documents.

Pure: no buildbot, no twisted. A record is accepted with its own field names
(``name``, ``builtOn``, ``sourceUrl`` ...) or the reference service's (``Name``,
``Hostname``, ``SourceUrl`` ...), and always answered with both: the reference's names with
the reference's types (``TimeStamp`` an integer of UNIX seconds), so a record posted to the
reference service comes back from this one as it went in.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from buildbot_farm.config_checks.values import is_number
from buildbot_farm.records.source import source_of_url

RESULTS = ("success", "warnings", "failure", "skipped", "exception", "retry", "cancelled")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
MAX_BINARIES = 1000
MAX_ENVIRONMENT = 100
MAX_TEXT = 2048
# The reference's names -> ours; Architecture lives in the environment, BinaryUrl is the
# URL of the first binary, GoVersion is the toolchain of a Go record.
REFERENCE_NAMES = {
    "Name": "name",
    "Version": "version",
    "TimeStamp": "timestamp",
    "Hostname": "builtOn",
    "SourceUrl": "sourceUrl",
    "Language": "language",
    "GoVersion": "toolchain",
}


class InvalidRecord(ValueError):
    """A record that cannot be stored; ``problems`` maps each bad field to what is wrong."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in sorted(problems.items())))
        self.problems = problems


@dataclass(frozen=True)
class Binary:
    """One artifact of a build: where to download it, its size and sha256.

    ``size`` and ``sha256`` are None when whoever posted the record did not know them
    (the reference service records a bare ``BinaryUrl``); such a binary cannot be attested.
    """

    url: str
    size: int | None = None
    sha256: str | None = None
    path: str = ""

    def as_json(self) -> dict[str, Any]:
        """The JSON form in a record."""
        return {"path": self.path, "url": self.url, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class BuildRecord:
    """The immutable record of one finished build."""

    name: str
    version: str
    timestamp: float
    result: str = "success"
    built_on: str = ""
    language: str = ""
    source_url: str = ""
    source: dict[str, Any] | None = None
    build_url: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    binaries: tuple[Binary, ...] = ()
    toolchain: str = ""
    byproducts: tuple[Binary, ...] = ()

    @property
    def commit(self) -> str | None:
        """The source commit, when the record names one (in ``source`` or its ``sourceUrl``)."""
        commit = (self.source or {}).get("commit")
        if isinstance(commit, str) and commit:
            return commit
        found = source_of_url(self.source_url)
        return found.commit if found else None

    @property
    def is_go(self) -> bool:
        """Whether the record is of a Go build (the reference's ``GoVersion`` applies)."""
        return self.language.strip().lower() == "go"

    def as_json(self) -> dict[str, Any]:
        """The record with our field names and the reference's, as the API answers it.

        ``timestamp`` is a whole number when the time is whole seconds; ``TimeStamp`` is
        always the integer UNIX time. ``GoVersion`` is there for Go records only.
        """
        binaries = [b.as_json() for b in self.binaries]
        document = {
            "name": self.name,
            "version": self.version,
            "timestamp": _seconds(self.timestamp),
            "result": self.result,
            "builtOn": self.built_on,
            "language": self.language,
            "sourceUrl": self.source_url,
            "source": self.source,
            "buildUrl": self.build_url,
            "environment": self.environment,
            "binaries": binaries,
            "byproducts": [b.as_json() for b in self.byproducts],
            "toolchain": self.toolchain,
            "Name": self.name,
            "Version": self.version,
            "TimeStamp": int(self.timestamp),
            "Hostname": self.built_on,
            "Architecture": str(self.environment.get("arch", "")),
            "SourceUrl": self.source_url,
            "BinaryUrl": binaries[0]["url"] if binaries else "",
            "Language": self.language,
        }
        if self.is_go:
            document["GoVersion"] = self.toolchain
        return document

    def document(self) -> bytes:
        """The canonical JSON bytes stored and served for this record."""
        return canonical_json(self.as_json())


def canonical_json(value: Any) -> bytes:
    """Compact JSON with sorted keys: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _seconds(timestamp: float) -> int | float:
    return int(timestamp) if float(timestamp).is_integer() else timestamp


def rfc3339(timestamp: float) -> str:
    """UTC seconds as ``YYYY-MM-DDThh:mm:ssZ``."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def default_version(timestamp: float) -> str:
    """The reference's default version: the UTC time as ``YYYYMMDDhhmmss``."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.strftime("%Y%m%d%H%M%S")


def parse_record(body: Any) -> BuildRecord:
    """Check a posted record field by field; raise :class:`InvalidRecord` listing every problem.

    Fields may use the reference's names; giving both names of one field with different
    values is a problem, as are unknown fields.
    """
    if not isinstance(body, Mapping):
        raise InvalidRecord({"body": "must be a JSON object"})
    problems: dict[str, str] = {}
    data = _merge_reference_names(body, problems)
    record = _Checker(data, problems).record()
    if problems or record is None:
        raise InvalidRecord(problems)
    return record


_OURS = {
    "name", "version", "timestamp", "result", "builtOn", "language", "sourceUrl", "source",
    "buildUrl", "environment", "binaries", "byproducts", "toolchain",
}
_REFERENCE_ONLY = {"Architecture", "BinaryUrl"}


def _merge_reference_names(body: Mapping[str, Any], problems: dict[str, str]) -> dict[str, Any]:
    data = {k: v for k, v in body.items() if k in _OURS}
    for key in sorted(set(body) - _OURS - set(REFERENCE_NAMES) - _REFERENCE_ONLY):
        problems[str(key)[:100]] = "unknown field"
    for theirs, ours in REFERENCE_NAMES.items():
        if theirs not in body:
            continue
        value = body[theirs]
        if theirs == "TimeStamp" and isinstance(value, str):
            value = _parse_time(value, theirs, problems)
        if ours in data and data[ours] != value:
            problems[theirs] = f"differs from {ours}; give one of them"
        data.setdefault(ours, value)
    environment = data.get("environment", {})
    if isinstance(environment, Mapping):
        environment = dict(environment)
        if "Architecture" in body:
            environment.setdefault("arch", body["Architecture"])
        data["environment"] = environment
    language = data.get("language")
    go = isinstance(language, str) and language.strip().lower() == "go"
    if body.get("GoVersion") and not go:
        problems["GoVersion"] = "is the toolchain of Go records; give toolchain for this language"
    binary_url = body.get("BinaryUrl")
    if binary_url and "binaries" not in data:
        data["binaries"] = [{"url": binary_url}]
    elif binary_url:
        first = data["binaries"][0] if isinstance(data["binaries"], list) else None
        if not isinstance(first, Mapping) or first.get("url") != binary_url:
            problems["BinaryUrl"] = "differs from binaries[0].url; give one of them"
    elif binary_url is not None and binary_url != "":
        problems["BinaryUrl"] = "must be a URL string"
    return data


def _parse_time(value: str, name: str, problems: dict[str, str]) -> Any:
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        problems[name] = "must be an RFC 3339 time such as 2024-05-01T12:00:00Z"
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


class _Checker:
    def __init__(self, data: dict[str, Any], problems: dict[str, str]) -> None:
        self.data = data
        self.problems = problems

    def record(self) -> BuildRecord | None:
        name = self.identifier("name")
        version = self.identifier("version")
        timestamp: Any = self.data.get("timestamp")
        if not is_number(timestamp) or not 0 <= timestamp < 1e11:
            self.problems["timestamp"] = "required: UTC seconds since 1970 (a number >= 0)"
        result = self.data.get("result", "success")
        if result not in RESULTS:
            self.problems["result"] = f"must be one of {', '.join(RESULTS)}"
        texts = {
            k: self.text(k) for k in ("builtOn", "language", "sourceUrl", "buildUrl", "toolchain")
        }
        source = self.data.get("source")
        if source is not None and not (
            isinstance(source, Mapping)
            and all(isinstance(v, (str, type(None))) and len(v or "") <= MAX_TEXT
                    for v in source.values())
        ):
            self.problems["source"] = "must be an object of strings (repository, commit, branch)"
        environment = self.environment()
        binaries = self.binaries("binaries")
        byproducts = self.binaries("byproducts")
        if self.problems:
            return None
        if not source:
            found = source_of_url(texts["sourceUrl"])
            source = found.as_json() if found else None
        return BuildRecord(
            name=name, version=version, timestamp=float(timestamp), result=result,
            built_on=texts["builtOn"], language=texts["language"],
            source_url=texts["sourceUrl"], source=dict(source) if source else None,
            build_url=texts["buildUrl"], environment=environment, binaries=binaries,
            toolchain=texts["toolchain"], byproducts=byproducts,
        )

    def identifier(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str) or not NAME_PATTERN.match(value):
            self.problems[key] = (
                "required: 1-200 characters of letters, digits, '.', '_', '+', '-',"
                " starting with a letter or digit"
            )
            return ""
        return value

    def text(self, key: str) -> str:
        value = self.data.get(key, "")
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            self.problems[key] = f"must be a string of at most {MAX_TEXT} characters"
            return ""
        absolute = re.match(r"^[a-z][a-z0-9+.-]*:", value)
        if key in ("sourceUrl", "buildUrl") and value and not absolute:
            self.problems[key] = "must be an absolute URL (scheme:...)"
        return value

    def environment(self) -> dict[str, Any]:
        value = self.data.get("environment", {})
        if (
            not isinstance(value, Mapping)
            or len(value) > MAX_ENVIRONMENT
            or not all(
                isinstance(k, str) and len(k) <= 200 and _is_scalar(v) for k, v in value.items()
            )
        ):
            self.problems["environment"] = (
                f"must be an object of at most {MAX_ENVIRONMENT} string, number, boolean"
                " or null values"
            )
            return {}
        return dict(value)

    def binaries(self, key: str) -> tuple[Binary, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or len(value) > MAX_BINARIES:
            self.problems[key] = f"must be a list of at most {MAX_BINARIES} objects"
            return ()
        found = []
        for index, item in enumerate(value):
            where = f"{key}[{index}]"
            if not isinstance(item, Mapping):
                self.problems[where] = "must be an object {url, size, sha256, path}"
                continue
            url: Any = item.get("url")
            size: Any = item.get("size")
            sha: Any = item.get("sha256")
            path: Any = item.get("path")
            if not isinstance(url, str) or not re.match(r"^https?://", url) or len(url) > MAX_TEXT:
                self.problems[f"{where}.url"] = "required: an http(s) URL"
            if size is not None and (not isinstance(size, int) or isinstance(size, bool)
                                     or size < 0):
                self.problems[f"{where}.size"] = "the size in bytes (an integer >= 0), or null"
            if sha is not None and (not isinstance(sha, str) or not SHA256_PATTERN.match(sha)):
                self.problems[f"{where}.sha256"] = "64 lower-case hex digits, or null"
            if path is not None and (not isinstance(path, str) or len(path) > MAX_TEXT):
                self.problems[f"{where}.path"] = "must be a string"
            if not any(p.startswith(where) for p in self.problems):
                found.append(Binary(url=url, size=size, sha256=sha, path=path or ""))
        return tuple(found)


def _is_scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_TEXT
    return value is None or isinstance(value, (bool, int)) or is_number(value)
