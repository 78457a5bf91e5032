"""The buildlet agent: the one-file, standard-library HTTP service run on each remote build host.

``AGENT_PATH`` is the agent's source file, for code that copies it into a container or onto a
host and starts it there with
``python3 buildlet_agent.py --listen HOST:PORT --workdir DIR --secret-file FILE``.
Its module docstring describes the wire protocol.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["AGENT_PATH"]

AGENT_PATH = Path(__file__).with_name("buildlet_agent.py")
