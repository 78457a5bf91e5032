"""nginx for the tests: the binary (or a clear failure naming the package to install) and
one process started with a configuration written into a private working directory."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

INSTALL_HINT = "install nginx-light (tests/harness/install-system-packages.sh)"
# The http-level settings of Debian's /etc/nginx/nginx.conf (its TLS lines do not apply).
DEBIAN_HTTP = (
    " sendfile on;\n tcp_nopush on;\n types_hash_max_size 2048;\n"
    " include /etc/nginx/mime.types;\n default_type application/octet-stream;\n gzip on;\n"
)


def nginx_binary(needs: str = "these tests need nginx") -> str:
    """The nginx binary; fails the test with ``needs`` and what to install when missing."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.fail(f"{needs}: {INSTALL_HINT}", pytrace=False)
    return binary


def start_nginx(
    binary: str, workdir: Path, servers: str, http: str = "", modules: tuple[Path, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start ``binary`` in the foreground with one worker, its pid file, error log and
    temporary files in ``workdir``, access logging off, ``http`` settings (such as
    :data:`DEBIAN_HTTP`) and the ``servers`` blocks; the caller waits until it answers and
    terminates it. Its error log is ``workdir / "error.log"``."""
    temp = workdir / "temp"
    temp.mkdir(parents=True)
    loads = "".join(f"load_module {module};\n" for module in modules)
    config = workdir / "nginx.conf"
    config.write_text(
        f"{loads}user root;\ndaemon off;\nworker_processes 1;\npid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log;\nevents {{}}\nhttp {{\n{http} access_log off;\n"
        f" client_body_temp_path {temp}/body;\n proxy_temp_path {temp}/proxy;\n"
        f" fastcgi_temp_path {temp}/f;\n uwsgi_temp_path {temp}/u;\n"
        f" scgi_temp_path {temp}/s;\n{servers}\n}}\n"
    )
    return subprocess.Popen([binary, "-c", str(config), "-e", str(workdir / "error.log")])
