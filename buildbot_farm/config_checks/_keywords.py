"""Unknown keyword arguments of the farm's master.cfg classes, named with what they accept."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from buildbot import config

from buildbot_farm.config_checks._configuration import CrossCheck
from buildbot_farm.config_checks._hook import watch_config

C = TypeVar("C", bound=type)


def suggestion(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_keywords_message(label: str, unknown: Sequence[str], accepted: Sequence[str]) -> str:
    """The config error for ``unknown`` keywords of ``label``: each named, then the accepted."""
    named = ", ".join(f"{word!r}{suggestion(word, accepted)}" for word in unknown)
    plural = "s" if len(unknown) > 1 else ""
    return f"{label}: unknown argument{plural} {named}; it takes {', '.join(accepted)}"


def _own_parameters(init: Callable[..., Any]) -> list[str]:
    parameters = list(inspect.signature(init).parameters.values())[1:]
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def checked_keywords(label: str, also: Iterable[str] = (),
                     cross_checks: Iterable[CrossCheck] = ()) -> Callable[[C], C]:
    """Class decorator: a keyword the class does not take is a config error naming it.

    ``label`` is how master.cfg writes the class (``"steps.ArtifactUpload"``). The class
    takes the named parameters of its ``__init__`` and ``also`` (what its ``**kwargs`` are
    passed on to). An unknown keyword is reported, with the accepted ones and the closest
    match, and left out; when the call then lacks a required argument (a misspelled one),
    that report is raised at once instead of a TypeError. Each construction also has the
    configuration being loaded cross-checked (:func:`watch_config`), with ``cross_checks``:
    what the class's objects need from the rest of the configuration.
    """

    def decorate(cls: C) -> C:
        original = cls.__dict__.get("__init__") or getattr(cls, "__init__")  # noqa: B009
        accepted = tuple(dict.fromkeys([*_own_parameters(original), *also]))
        signature = inspect.signature(original)
        checks = tuple(cross_checks)

        @functools.wraps(original)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807
            unknown = [k for k in kwargs if k not in accepted]
            known = {k: v for k, v in kwargs.items() if k not in unknown}
            try:
                signature.bind(self, *args, **known)
                unbound = None
            except TypeError as e:
                unbound = f"{label}: {e}"
            if unknown:
                message = unknown_keywords_message(label, unknown, accepted)
                config.error(message, always_raise=unbound is not None)
            elif unbound is not None:
                config.error(unbound, always_raise=True)
            watch_config(*checks)
            original(self, *args, **known)

        setattr(cls, "__init__", __init__)  # noqa: B010 (mypy refuses assigning to a method)
        return cls

    return decorate
