"""The docker-py details ContainerTask and the docker provider rely on beyond its public API
(blocking calls).

docker-py's public ``put_archive`` cannot ask the engine to give the copied files the
container user's ownership (``copyUIDGID``), its ``attach_socket`` keeps the client's
read timeout, which would cut the output of a task that is quiet for a while, and it has no
call for the engine's ``HEAD /containers/{id}/archive`` (whether a path exists). All are
written here on the ``APIClient``'s own request helpers (``_put``, ``_post``, ``_url``,
``_raise_for_status``, ``_get_raw_response_socket``, ``_disable_socket_timeout``), so that
a docker-py upgrade that changes them breaks one place; ``tests/test_compat.py`` fails
loudly, naming which one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import docker

__all__ = ["thd_attach_unlimited", "thd_path_exists", "thd_put_archive_owned"]


def thd_put_archive_owned(api: docker.APIClient, cid: str, path: str,
                          data: Iterable[bytes]) -> None:
    """Stream the tar ``data`` into container ``cid`` at ``path``, owned by its user."""
    response = api._put(
        api._url("/containers/{0}/archive", cid),
        params={"path": path, "copyUIDGID": "1"},
        data=iter(data),
    )
    api._raise_for_status(response)


def thd_attach_unlimited(api: docker.APIClient, cid: str) -> tuple[Any, Any]:
    """Attach to ``cid``'s output (logs too) with no read timeout: ``(response, socket)``.

    Read the multiplexed frames from the socket (``docker.utils.socket.frames_iter``, or
    ``docker_engines.output_frames`` where the engine may be on TLS); close the response
    when done.
    """
    response = api._post(
        api._url("/containers/{0}/attach", cid),
        headers={"Connection": "Upgrade", "Upgrade": "tcp"},
        params={"logs": 1, "stdout": 1, "stderr": 1, "stream": 1},
        stream=True,
    )
    sock = api._get_raw_response_socket(response)
    api._disable_socket_timeout(sock)
    return response, sock


def thd_path_exists(api: docker.APIClient, cid: str, path: str) -> bool:
    """Whether ``path`` exists in container ``cid`` (a symbolic link itself counts).

    The engine answers 404 for a missing container too (a HEAD answer has no message to tell
    them apart): the caller's next call on the container names that error.
    """
    response = api.head(
        api._url("/containers/{0}/archive", cid), params={"path": path}, timeout=api.timeout
    )
    if response.status_code == 404:
        return False
    api._raise_for_status(response)
    return True
