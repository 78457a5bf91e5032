"""A test image that can be a Buildbot worker: the base image plus ``buildbot_worker``.

The packages come from this virtualenv's site-packages, not from a registry: the base image's
python3 is CPython 3.11 on Debian bookworm like the venv's, so they run there as installed.
Most are pure Python; ``cryptography`` (which autobahn imports unconditionally) and the
``cffi`` backend it loads are binary, built for CPython 3.11 (abi3) on glibc >= 2.34, and link
only libc and libgcc_s, which the base image has. The image's command starts a worker from
the environment Buildbot's ``DockerLatentWorker`` gives a container.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import buildbot_worker
import docker
from docker.errors import DockerException

from buildbot_farm.private_dirs import remote_archive
from tests.harness.images import ImageBuildError, ensure_base_image, ensure_image

RECIPE_VERSION = "1"
# buildbot_worker and what it imports, transitively (Twisted, and autobahn through its
# msgpack protocol module, which buildbot_worker.pb always imports), as site-packages globs.
# Optional imports (pyOpenSSL, service_identity, cbor2, autobahn's NVX accelerators) are not
# copied: the worker runs without them, as it does where they are not installed.
PACKAGES = (
    "buildbot_worker",
    "twisted",
    "zope",
    "attr",
    "attrs",
    "automat",
    "constantly",
    "hyperlink",
    "idna",
    "incremental",
    "typing_extensions.py",
    "autobahn",
    "txaio",
    "msgpack",
    "cryptography",
    "_cffi_backend.cpython-311-*.so",
)
SITE_PACKAGES = Path(buildbot_worker.__file__).resolve().parents[1]
IMAGE_SITE = "usr/local/lib/python3.11/dist-packages"
WORKER_DIR = "/buildbot"
SOURCE_MTIME = 1_700_000_000
BUILD_TIMEOUT = 300

BUILDBOT_WORKER_SCRIPT = """\
#!/usr/bin/python3
import sys

from buildbot_worker.scripts.runner import run

sys.exit(run())
"""

# The image's command, for DockerLatentWorker (which sets BUILDMASTER, BUILDMASTER_PORT,
# WORKERNAME and WORKERPASS): FarmLatentWorker's own bootstrap, with those variables mapped
# onto the ones it reads, so that bench_attach compares like with like.
REMOTE_PATH = "/usr/local/lib/farm-remote.pyz"
START_WORKER_SCRIPT = f"""\
#!/usr/bin/python3
import os
os.environ["WORKDIR"] = "{WORKER_DIR}"
os.makedirs("{WORKER_DIR}", exist_ok=True)  # a buildlet's WORKDIR exists; the image's did not
os.environ["FARM_MASTER"] = os.environ["BUILDMASTER"] + ":" + os.environ["BUILDMASTER_PORT"]
os.environ["FARM_WORKER_NAME"] = os.environ["WORKERNAME"]
os.environ["FARM_WORKER_PASSWORD"] = os.environ["WORKERPASS"]
os.execv("/usr/bin/python3", ["python3", "{REMOTE_PATH}", "bootstrap"])
"""
START_WORKER_PATH = "/usr/local/bin/start-buildbot-worker"
SCRIPTS = {
    "usr/local/bin/buildbot-worker": BUILDBOT_WORKER_SCRIPT,
    START_WORKER_PATH.lstrip("/"): START_WORKER_SCRIPT,
}
WORKER_CHANGES = (f'CMD ["{START_WORKER_PATH}"]',)


def ensure_worker_image(client: docker.DockerClient) -> str:
    """Return the tag of the worker test image, building it on the base image if absent.

    The tag is a hash of the base image's tag and of every file added, so it changes when
    the venv's packages do. Run the image with no command to start a worker from
    DockerLatentWorker's environment; ``buildbot-worker`` and ``python3 -c 'import
    buildbot_worker.bot'`` work in it with no network.
    """
    base = ensure_base_image(client)
    archive = worker_archive()
    recipe = hashlib.sha256()
    for part in (RECIPE_VERSION, base, *WORKER_CHANGES):
        recipe.update(part.encode() + b"\0")
    recipe.update(archive)
    tag = f"farm-test-worker:{recipe.hexdigest()[:16]}"
    return ensure_image(client, tag, lambda: _build_worker(client, base, tag, archive))


def worker_archive() -> bytes:
    """The tar added to the base image at ``/``: the packages, the two scripts, farm-remote.pyz.

    Its bytes depend only on the files' contents, names and modes, never on when or where
    they were installed, so that its hash names the image.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in _parents(IMAGE_SITE):
            tar.addfile(_entry(directory, tarfile.DIRTYPE, 0o755))
        for pattern in PACKAGES:
            sources = sorted(SITE_PACKAGES.glob(pattern))
            if not sources:
                raise ImageBuildError(
                    f"nothing matches {pattern} in {SITE_PACKAGES}: the worker image copies it"
                    " from this venv; reinstall the venv with `make venv`"
                )
            for path in (p for source in sources for p in _files(source)):
                target = f"{IMAGE_SITE}/{path.relative_to(SITE_PACKAGES).as_posix()}"
                if path.is_dir():
                    tar.addfile(_entry(target, tarfile.DIRTYPE, 0o755))
                else:
                    data = path.read_bytes()
                    tar.addfile(_entry(target, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
        for target, text in sorted(SCRIPTS.items()):
            data = text.encode()
            tar.addfile(_entry(target, tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
        data = remote_archive().read_bytes()
        tar.addfile(_entry(REMOTE_PATH.lstrip("/"), tarfile.REGTYPE, 0o644, len(data)),
                    io.BytesIO(data))
    return buffer.getvalue()


def _files(root: Path) -> Iterator[Path]:
    """``root`` and what is under it, in a stable order, without bytecode caches."""
    if root.name == "__pycache__":
        return
    yield root
    if root.is_dir():
        for child in sorted(root.iterdir()):
            yield from _files(child)


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _entry(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type, entry.mode, entry.size, entry.mtime = kind, mode, size, SOURCE_MTIME
    return entry


def _build_worker(client: docker.DockerClient, base: str, tag: str, archive: bytes) -> None:
    """Add ``archive`` to ``base``, byte-compile the packages, and commit the result as ``tag``."""
    repository, version = tag.split(":")
    try:
        container = client.containers.create(
            base,
            command=["python3", "-m", "compileall", "-q", f"/{IMAGE_SITE}"],
            network_mode="none",
            user="0:0",
        )
    except DockerException as error:
        raise ImageBuildError(
            f"cannot create a container of {base} to build {tag}: {error}"
        ) from error
    try:
        container.put_archive("/", archive)
        container.start()
        status = container.wait(timeout=BUILD_TIMEOUT)["StatusCode"]
        if status != 0:
            output = container.logs().decode(errors="replace")[-2000:]
            raise ImageBuildError(
                f"byte-compiling the packages for {tag} failed (exit {status}):\n{output}"
            )
        container.commit(repository, version, changes=list(WORKER_CHANGES))
    except DockerException as error:
        raise ImageBuildError(f"the Docker engine failed to build {tag}: {error}") from error
    finally:
        container.remove(force=True)
