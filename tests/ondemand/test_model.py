"""Parameter types, normalisation and the build key (pure, no Buildbot)."""

from __future__ import annotations

import hashlib

import pytest

from buildbot_farm.ondemand import model

PARAMETERS = [
    model.ChoiceParameter("os", choices=("linux", "darwin", "windows")),
    model.ChoiceParameter("arch", choices=("amd64", "arm64")),
    model.StringParameter("flavor", default="plain", pattern=r"[a-z]+"),
    model.ListParameter("plugins"),
]


def test_defaults_fill_what_a_request_leaves_out() -> None:
    """An empty request takes the first choice, the string default and an empty list."""
    assert model.normalise(PARAMETERS, {}) == {
        "os": "linux", "arch": "amd64", "flavor": "plain", "plugins": [],
    }


def test_lists_are_sorted_deduplicated_and_versioned() -> None:
    """Items are sorted, repeated ones dropped, and a bare name gets the default version."""
    values = model.normalise(PARAMETERS, {"plugins": " b@2, a , b@2,a@latest"})
    assert values["plugins"] == ["a@latest", "b@2"]


def test_a_form_and_a_json_list_give_the_same_key() -> None:
    """Comma-joined text (the force form) and a JSON list (the API) normalise alike."""
    form = model.normalise(PARAMETERS, {"plugins": ["x@1,y@2"], "os": ["linux"]})
    api = model.normalise(PARAMETERS, {"plugins": ["y@2", "x@1"], "os": "linux"})
    assert model.build_key("s", form) == model.build_key("s", api)


def test_a_resolver_keys_latest_by_what_it_resolves_to() -> None:
    """With a resolver, ``latest`` is replaced by the exact version before keying."""
    resolved = model.ListParameter(
        "plugins", resolver=lambda name, version: "9.1" if version == "latest" else version
    )
    assert model.normalise([resolved], {"plugins": "git"}) == {"plugins": ["git@9.1"]}


def test_the_key_is_the_sha256_of_the_canonical_json() -> None:
    """The key is the hex sha256 of sorted, compact JSON of the scheduler and values."""
    text = '{"parameters":{"a":1,"b":["x"]},"scheduler":"s"}'
    assert model.build_key("s", {"b": ["x"], "a": 1}) == hashlib.sha256(text.encode()).hexdigest()
    assert model.is_build_key(model.build_key("s", {}))
    assert model.build_key("s", {}) != model.build_key("t", {})


def test_every_bad_parameter_is_named() -> None:
    """One error lists each bad value and each unknown name, with what is wrong."""
    with pytest.raises(model.BadParameters) as caught:
        model.normalise(PARAMETERS, {"os": "plan9", "flavor": "UP", "plugins": "a@b c",
                                      "colour": "red"})
    problems = caught.value.problems
    assert set(problems) == {"os", "flavor", "plugins", "colour"}
    assert "not one of linux, darwin, windows" in problems["os"]
    assert "unknown parameter" in problems["colour"]
    assert "name@version" in problems["plugins"]


def test_a_build_without_parameters_says_so() -> None:
    """An unknown name on a build that takes none says it takes none."""
    with pytest.raises(model.BadParameters) as caught:
        model.normalise([], {"branch": "main"})
    assert caught.value.problems == {
        "branch": "unknown parameter; this build takes no parameters"}


def test_non_string_values_are_refused() -> None:
    """A number where text belongs is a named error, not a crash."""
    with pytest.raises(model.BadParameters, match="flavor: must be a string"):
        model.normalise(PARAMETERS, {"flavor": 3})


def test_declarations_are_checked() -> None:
    """A bad name or a default outside the choices is reported for checkConfig."""
    assert model.StringParameter("1x").problems()
    assert model.ChoiceParameter("os", choices=("a",), default="b").problems()
    assert model.ChoiceParameter("os", choices=()).problems()
    assert PARAMETERS[0].problems() == []
