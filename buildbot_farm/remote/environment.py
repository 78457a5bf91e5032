"""The environment every exec on a buildlet gets from its agent, and how to run its archive.

Light on purpose (no imports): the hand-off that starts a worker reads it first thing.
"""

# The unix socket of the agent's pre-started worker, when it keeps one.
PRESTART_SOCKET_ENV = "FARM_PRESTARTED_WORKER"
# The agent's farm-remote.pyz.
REMOTE_ENV = "FARM_REMOTE"
# ``python3 -c RUN_REMOTE ARGS...`` on a buildlet runs its agent's farm-remote.pyz with ARGS.
RUN_REMOTE = (
    "import os, sys; "
    "archive = os.environ.get('FARM_REMOTE') or sys.exit("
    "'farm-remote: FARM_REMOTE is not set: this buildlet is not run by farm-remote.pyz'); "
    "sys.path.insert(0, archive); "
    "from buildbot_farm.remote.main import main; "
    "sys.exit(main(sys.argv[1:]))"
)
