"""``engine_errors``: the one translation of docker-py's errors into the farm's.

ContainerTask (``EngineError``) and the Docker buildlet provider (``ProviderError``) both
say what was being done, on which engine, and what to check, in the same words.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Callable

import requests
from docker.errors import APIError, DockerException, ImageNotFound

__all__ = ["engine_errors"]


@contextlib.contextmanager
def engine_errors(
    doing: str,
    engine: str,
    error: Callable[[str], Exception],
    image_missing: Callable[[str], Exception] | None = None,
) -> Iterator[None]:
    """Turn docker-py's and the connection's errors raised inside into ``error(message)``.

    ``doing`` says what was being done ("creating the container from IMAGE"), ``engine``
    which engine (its URL). A missing image becomes ``image_missing(message)`` when given.
    The farm's own exceptions raised inside pass through unchanged.
    """
    try:
        yield
    except ImageNotFound as e:
        message = f"{doing}: {e.explanation or e}"
        raise (image_missing or error)(message) from e
    except APIError as e:
        raise error(f"{doing}: the Docker engine at {engine} said: {e.explanation or e}") from e
    except (DockerException, requests.RequestException, OSError) as e:
        raise error(
            f"{doing}: cannot reach the Docker engine at {engine} ({e}); check that it runs"
            " and that the master may use its socket"
        ) from e
