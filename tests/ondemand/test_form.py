"""Which force-form arguments are the build's: the form's own fields are set aside."""

from __future__ import annotations

from buildbot_farm.ondemand.form import build_arguments

# What Buildbot's force dialog sends for an OnDemandScheduler with one parameter "n".
DIALOG = {"username": "", "reason": "force build", "priority": "0", "branch": "",
          "revision": "", "repository": "", "project": "", "n": "1"}


def test_the_dialogs_own_fields_are_no_build_arguments() -> None:
    """Who, why, the priority and the empty source fields stay out; the parameter stays in."""
    assert build_arguments(["n"], {**DIALOG, "owner": "me <me@example.org>"}) == {"n": "1"}


def test_a_source_field_with_a_value_and_unknown_names_stay_in_to_be_refused() -> None:
    """A branch, a revision or a typo is passed on, so normalisation names it as unknown."""
    sent = {**DIALOG, "branch": "main", "revision": ["abc"], "colour": "red"}
    assert build_arguments(["n"], sent) == {
        "n": "1", "branch": "main", "revision": ["abc"], "colour": "red"}


def test_a_parameter_may_take_the_name_of_a_form_field() -> None:
    """A declared parameter called "branch" is the build's, even when empty."""
    assert build_arguments(["branch"], {"branch": "", "reason": "r"}) == {"branch": ""}
