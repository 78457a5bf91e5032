"""Typed parameters of an on-demand build, their normalisation and the build key.

Pure logic: no Buildbot, no Twisted. The same normalisation serves the HTTP API and the
web UI's force form, so one request gives one key whichever way it arrives.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# A resolver turns a list item's version ("latest", "1.x") into the exact one it means.
Resolver = Callable[[str, str], str]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ITEM = re.compile(r"^[A-Za-z0-9_.\-/]+$")


class BadParameters(ValueError):
    """Values that cannot be built; ``problems`` maps each bad parameter to what is wrong."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(sorted(problems.items()))
        super().__init__("; ".join(f"{name}: {why}" for name, why in self.problems.items()))


@dataclass(frozen=True)
class Parameter:
    """One named parameter; ``default`` fills it in when a request leaves it out."""

    name: str
    label: str = ""
    default: Any = None

    def problems(self) -> list[str]:
        """What is wrong with this declaration (for ``checkConfig``)."""
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            return [f"parameter name {self.name!r} must be an identifier"]
        return []

    def normalise(self, value: Any) -> Any:
        """The canonical form of ``value``; raise ValueError saying what is wrong."""
        raise NotImplementedError


def _one_text(value: Any) -> str:
    """A single string from a request value (a form sends one-element lists)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {value!r}")
    return value.strip()


@dataclass(frozen=True)
class StringParameter(Parameter):
    """Free text, stripped; ``pattern`` (a regular expression) must match all of it."""

    default: Any = ""
    pattern: str = ""
    max_length: int = 200

    def normalise(self, value: Any) -> str:
        """The stripped text, checked against ``pattern`` and ``max_length``."""
        text = _one_text(value)
        if len(text) > self.max_length:
            raise ValueError(f"must be at most {self.max_length} characters")
        if self.pattern and not re.fullmatch(self.pattern, text):
            raise ValueError(f"{text!r} does not match {self.pattern!r}")
        return text


@dataclass(frozen=True)
class ChoiceParameter(Parameter):
    """One of ``choices``; without a default the first choice is used."""

    choices: Sequence[str] = ()

    def problems(self) -> list[str]:
        """A choice parameter needs at least one choice, and its default among them."""
        found = super().problems()
        if not self.choices or not all(isinstance(c, str) for c in self.choices):
            found.append(f"parameter {self.name}: choices must be a non-empty list of strings")
        elif self.default is not None and self.default not in self.choices:
            found.append(f"parameter {self.name}: default {self.default!r} is not a choice")
        return found

    def normalise(self, value: Any) -> str:
        """``value`` when it is one of the choices."""
        text = _one_text(value)
        if text not in self.choices:
            raise ValueError(f"{text!r} is not one of {', '.join(self.choices)}")
        return text


@dataclass(frozen=True)
class ListParameter(Parameter):
    """A set of ``name@version`` items (``separator``-joined text or a JSON list).

    Items are de-duplicated and sorted. An item without ``@`` gets ``default_version``;
    with a ``resolver``, every version goes through ``resolver(name, version)`` so a
    moving version such as ``latest`` is keyed by what it resolves to, never by name.
    """

    default: Any = ()
    separator: str = ","
    default_version: str = "latest"
    resolver: Resolver | None = field(default=None, compare=False)

    def normalise(self, value: Any) -> list[str]:
        """The sorted, resolved ``name@version`` items; ValueError naming the bad ones."""
        if isinstance(value, str):
            items = [i for i in (p.strip() for p in value.split(self.separator)) if i]
        elif isinstance(value, (list, tuple)) and all(isinstance(i, str) for i in value):
            items = [i.strip() for i in value if i.strip()]
            if len(items) == 1 and self.separator in items[0]:
                return self.normalise(items[0])
        else:
            raise ValueError(f"must be a list of name@version strings, not {value!r}")
        resolved = set()
        for item in items:
            name, _, version = item.partition("@")
            version = version or self.default_version
            if not _ITEM.match(name) or not _ITEM.match(version):
                raise ValueError(f"{item!r} is not name@version")
            if self.resolver is not None:
                version = self.resolver(name, version)
            resolved.add(f"{name}@{version}")
        return sorted(resolved)


def normalise(parameters: Sequence[Parameter], raw: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter's canonical value, defaults filled; raise BadParameters naming each.

    Names in ``raw`` that no parameter declares are errors too, so a typo is never
    silently built with the default.
    """
    problems: dict[str, str] = {}
    values: dict[str, Any] = {}
    known = {p.name for p in parameters}
    takes = f"this build takes {', '.join(sorted(known))}" if known else (
        "this build takes no parameters")
    for name in sorted(set(raw) - known):
        problems[name] = f"unknown parameter; {takes}"
    for parameter in parameters:
        value = raw.get(parameter.name, None)
        if value is None or value == "" or value == [""]:
            value = parameter.default
            if value is None and isinstance(parameter, ChoiceParameter) and parameter.choices:
                value = parameter.choices[0]
        try:
            values[parameter.name] = parameter.normalise(value)
        except ValueError as e:
            problems[parameter.name] = str(e)
    if problems:
        raise BadParameters(problems)
    return values


def canonical_json(value: Any) -> str:
    """The one JSON text of ``value``: sorted keys, no spaces, UTF-8 as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def build_key(scheduler: str, values: Mapping[str, Any]) -> str:
    """The build key: sha256 (hex) of the canonical JSON of the scheduler and its values."""
    text = canonical_json({"scheduler": scheduler, "parameters": dict(values)})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_build_key(text: str) -> bool:
    """Whether ``text`` looks like a build key (64 lowercase hex digits)."""
    return re.fullmatch(r"[0-9a-f]{64}", text) is not None
