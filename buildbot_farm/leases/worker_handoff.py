"""Starting a buildbot-worker on a buildlet, through its pre-started worker when it has one.

An agent run with ``--prestart-worker`` keeps a Python process that has already imported
buildbot-worker (about a quarter of a second of CPU saved at attach), waiting on the unix
socket named by ``FARM_PRESTARTED_WORKER``. ``handoff_script(bootstrap)`` is the ``python -c``
program FarmLatentWorker execs: it hands that process its environment, directory and
``bootstrap`` (the code that becomes the worker), then relays the worker's output until it
ends; with no pre-started process, or one that is gone or refuses, it says why on a
``farm-worker:`` line and runs ``bootstrap`` itself. Killing the exec ends the worker either
way: the pre-started process kills itself once its client hangs up.
"""

from __future__ import annotations

# The marker of the lines the exec prints about how the worker was started.
LOG_PREFIX = "farm-worker:"
USED_MESSAGE = f"{LOG_PREFIX} using the pre-started worker"

_CLIENT = """\
import json, os, socket, sys
BOOTSTRAP = {bootstrap!r}
def hand_off():
    path = os.environ.get("FARM_PRESTARTED_WORKER")
    if not path:
        return None, "this buildlet has none"
    conn = socket.socket(socket.AF_UNIX)
    try:
        conn.connect(path)
        request = {{"env": dict(os.environ), "cwd": os.getcwd(), "code": BOOTSTRAP}}
        conn.sendall(json.dumps(request).encode() + b"\\n")
        answer = b""
        while not answer.endswith(b"\\n"):
            data = conn.recv(1)
            if not data:
                break
            answer += data
    except OSError as exc:
        conn.close()
        return None, f"cannot reach it at {{path}}: {{exc}}"
    if answer != b"OK\\n":
        conn.close()
        return None, f"it answered {{answer.decode(errors='replace').strip() or 'nothing'}}"
    return conn, ""
conn, why = hand_off()
if conn is None:
    print(f"{prefix} no pre-started worker ({{why}}); starting one", flush=True)
    exec(compile(BOOTSTRAP, "<worker bootstrap>", "exec"), {{"__name__": "__main__"}})
else:
    print({used!r}, flush=True)
    while True:
        data = conn.recv(65536)
        if not data:
            break
        os.write(1, data)
"""


def handoff_script(bootstrap: str) -> str:
    """The ``python -c`` program that runs ``bootstrap`` in the pre-started worker, or itself."""
    return _CLIENT.format(bootstrap=bootstrap, prefix=LOG_PREFIX, used=USED_MESSAGE)
