"""Remove the containers and networks a crashed master left behind, found by their labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.python import log

from buildbot_farm.containers._engine import EngineError, thd_connect, thd_reap
from buildbot_farm.thread_pool import in_thread


async def reap_leftovers(reactor: Any, master_name: str, engines: Sequence[str | None]) -> int:
    """Remove every container task leftover of ``master_name`` on ``engines``; return how many.

    ``None`` in ``engines`` is the master's default engine (DOCKER_HOST or the local socket).
    An engine that cannot be reached is logged and skipped: a master without Docker starts.
    Call it only while this master runs no container task (at start).
    """
    removed = 0
    for docker_host in engines:
        try:
            client = await in_thread(reactor, thd_connect, docker_host)
        except EngineError as error:
            log.msg(f"farm: not reaping container task leftovers: {error}")
            continue
        try:
            containers, networks = await in_thread(reactor, thd_reap, client, master_name)
        except EngineError as error:
            log.msg(f"farm: reaping container task leftovers failed: {error}")
            continue
        finally:
            await in_thread(reactor, client.close)
        if containers or networks:
            log.msg(
                f"farm: removed {containers} leftover container(s) and {networks} network(s)"
                f" of master {master_name!r} on {client.api.base_url}"
            )
        removed += containers
    return removed
