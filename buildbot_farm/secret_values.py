"""Secrets in master.cfg the Buildbot way: a string, ``util.Secret("name")`` or
``util.Interpolate("%(secret:name)s")``.

A setting that holds a secret is checked twice. A literal string is checked by its
settings' ``problems()`` at checkconfig (:func:`literal_problem`); a renderable is skipped
there and rendered at (re)config through the master's secret providers by a
:class:`SecretRenderer`, which checks the rendered value the same way. Every message names
the argument and where the secret comes from, never its value.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from buildbot.interfaces import IRenderable

Render = Callable[[Any], Awaitable[Any]]

_SECRET_IN_FORMAT = re.compile(r"%\(secret:([^)]*)\)")
PEM_START = "-----BEGIN "


def is_renderable(value: object) -> bool:
    """Whether ``value`` is rendered by the master (``util.Secret``, ``util.Interpolate``...)."""
    return bool(IRenderable.providedBy(value))


def is_pem(value: object) -> bool:
    """Whether a (rendered) key setting is PEM text rather than the path of a PEM file."""
    return isinstance(value, str) and value.lstrip().startswith(PEM_START)


def source_of(value: object) -> str:
    """Where a renderable secret comes from, for messages: names, never values."""
    name = getattr(value, "secret_name", None)
    if isinstance(name, str):
        return f'util.Secret("{name}")'
    template = getattr(value, "fmtstring", None)
    if isinstance(template, str):
        names = _SECRET_IN_FORMAT.findall(template)
        if names:
            return "util.Interpolate(...) of secret " + ", ".join(f'"{n}"' for n in names)
        return "util.Interpolate(...)"
    return f"a {type(value).__name__} renderable"


def literal_problem(value: object, argument: str, min_length: int = 1) -> str | None:
    """What is wrong with a secret setting at checkconfig, or None (renderables: later).

    ``argument`` is how the message names the setting (``"FarmCoordinator: secret"``).
    """
    if is_renderable(value):
        return None
    if not isinstance(value, str) or len(value.strip()) < min_length:
        size = "a non-empty string" if min_length <= 1 else (
            f"a string of at least {min_length} characters"
        )
        return (f"{argument} must be {size}, or a secret such as util.Secret(\"name\")"
                " rendered with c['secretsProviders']")
    return None


class SecretRenderer:
    """Renders the secrets of one configuration, collecting every failure in ``errors``.

    ``render`` is the rendering service's ``renderSecrets``. A secret that cannot be
    rendered, or renders to something a literal could not be, adds a message to ``errors``
    and leaves the setting as it was; the caller refuses the configuration when
    ``errors`` is not empty.
    """

    def __init__(self, render: Render) -> None:
        self._render = render
        self.errors: list[str] = []

    async def text(self, value: Any, argument: str, min_length: int = 1) -> Any:
        """``value`` rendered and stripped of surrounding whitespace (a literal as it is)."""
        if not is_renderable(value):
            return value
        source = source_of(value)
        try:
            rendered = await self._render(value)
        except KeyError as e:
            reason = e.args[0] if e.args else "no such secret"
            self.errors.append(f"{argument}: {source} cannot be rendered: {reason}; check"
                               " c['secretsProviders'] and the secret's name")
            return value
        except Exception as e:
            self.errors.append(f"{argument}: {source} cannot be rendered: {type(e).__name__}:"
                               f" {e}")
            return value
        if not isinstance(rendered, str):
            self.errors.append(f"{argument}: {source} rendered to a value of type"
                               f" {type(rendered).__name__}, not a string")
            return value
        rendered = rendered.strip()
        if len(rendered) < min_length:
            wanted = "nothing" if min_length <= 1 else f"fewer than {min_length} characters"
            self.errors.append(f"{argument}: {source} rendered to {wanted}; check the secret")
            return value
        return rendered

    def fail(self, argument: str, value: Any, problem: str) -> None:
        """Record that the rendered ``value`` of ``argument`` is unusable: ``problem`` says why."""
        self.errors.append(f"{argument}: {source_of(value)} rendered to {problem}")
