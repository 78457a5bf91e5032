"""``python3 -m buildbot_farm.remote COMMAND ...`` or ``python3 farm-remote.pyz COMMAND ...``."""

import sys

from buildbot_farm.remote.main import main

sys.exit(main())
