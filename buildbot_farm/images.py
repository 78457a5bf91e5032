"""Images for container tasks, built on this machine from Debian packages, never pulled.

``buildbot-farm image build base`` makes the Debian bookworm image with python3 that the demo
build and the tests use; ``busybox`` makes a tiny one. Tags carry a digest of the recipe, so
an image is rebuilt only when its recipe changes.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import docker
from docker.errors import DockerException, ImageNotFound

RECIPE_VERSION = "1"
SUITE = "bookworm"
VARIANT = "minbase"
INCLUDE = ("python3",)
BASE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
)
BASE_EXCLUDES = ("./var/cache/apt/archives/*.deb",)
BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = ("sh", "echo", "cat", "ls", "true", "false", "sleep", "mkdir", "rm", "touch")
BUSYBOX_CHANGES = ("ENV PATH=/bin",)
LOCK_PATH = Path(tempfile.gettempdir()) / "farm-test-images.lock"
BUILD_LOG = Path(tempfile.gettempdir()) / "farm-test-base-build.log"
INSTALL_HINT = "run `sudo tests/harness/install-system-packages.sh`, which installs it"
_PT_INTERP = 3


class ImageBuildError(RuntimeError):
    """A test image could not be built; the message says why and what to do."""


def ensure_base_image(client: docker.DockerClient) -> str:
    """Return the tag of the Debian test base image (python3 inside), building it if absent.

    The first build debootstraps from this machine's apt mirror as root and takes a minute or
    two; later calls find the tag, which changes only when the recipe does.
    """
    recipe = {
        "recipe": RECIPE_VERSION,
        "suite": SUITE,
        "variant": VARIANT,
        "include": INCLUDE,
        "changes": BASE_CHANGES,
        "excludes": BASE_EXCLUDES,
    }
    tag = f"farm-test-base:{_digest(recipe)}"
    return ensure_image(client, tag, lambda: _build_base(client, tag))


def ensure_busybox_image(client: docker.DockerClient) -> str:
    """Return the tag of a tiny image holding only a static busybox, building it if absent."""
    if not BUSYBOX.is_file():
        raise ImageBuildError(f"{BUSYBOX} is missing (package busybox-static): {INSTALL_HINT}")
    binary = BUSYBOX.read_bytes()
    if not _is_static_elf(binary):
        raise ImageBuildError(
            f"{BUSYBOX} is linked dynamically, so it cannot run alone in an image: install"
            f" busybox-static instead; {INSTALL_HINT}"
        )
    recipe = {
        "recipe": RECIPE_VERSION,
        "busybox": hashlib.sha256(binary).hexdigest(),
        "applets": BUSYBOX_APPLETS,
        "changes": BUSYBOX_CHANGES,
    }
    tag = f"farm-test-busybox:{_digest(recipe)}"
    archive = _busybox_tar(binary)
    return ensure_image(client, tag, lambda: _import(client, tag, iter([archive]), BUSYBOX_CHANGES))


def debian_mirror(suite: str = SUITE, apt_dir: Path = Path("/etc/apt")) -> str:
    """Return the URI of the apt source this machine uses for ``suite``.

    Reads the deb822 ``*.sources`` files first, then the one-line ``sources.list``.
    """
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in _deb822_stanzas(path.read_text()):
            if (
                "deb" in stanza.get("types", "").split()
                and suite in stanza.get("suites", "").split()
                and stanza.get("enabled", "yes").lower() != "no"
                and stanza.get("uris")
            ):
                return stanza["uris"].split()[0]
    one_line = apt_dir / "sources.list"
    if one_line.exists():
        for line in one_line.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    raise ImageBuildError(
        f"no apt source for {suite} in {apt_dir}/sources.list.d/*.sources or {one_line}:"
        " the test base image is debootstrapped from it, so add one"
    )


def ensure_image(client: docker.DockerClient, tag: str, build: Callable[[], None]) -> str:
    """Return ``tag``, running ``build`` first unless the image exists; one builder at a time."""
    if _exists(client, tag):
        return tag
    lock = os.open(LOCK_PATH, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _exists(client, tag):
            build()
    finally:
        os.close(lock)
    return tag


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


def _build_base(client: docker.DockerClient, tag: str) -> None:
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin")
    if debootstrap is None:
        raise ImageBuildError(f"debootstrap is not installed: {INSTALL_HINT}")
    if os.geteuid() != 0:
        raise ImageBuildError(
            f"image {tag} is missing and building it runs debootstrap, which needs root:"
            " run the tests as root once"
        )
    mirror = debian_mirror(SUITE)
    workdir = Path(tempfile.mkdtemp(prefix="farm-rootfs-"))
    rootfs = workdir / "rootfs"  # not workdir itself: its 0700 mode would become the image's /
    try:
        with BUILD_LOG.open("wb") as log:
            run = subprocess.run(
                [
                    debootstrap,
                    f"--variant={VARIANT}",
                    f"--include={','.join(INCLUDE)}",
                    SUITE,
                    str(rootfs),
                    mirror,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
            details = rootfs / "debootstrap" / "debootstrap.log"
            if run.returncode != 0 and details.exists():
                log.write(details.read_bytes())
        if run.returncode != 0:
            raise ImageBuildError(
                f"debootstrap of {SUITE} from {mirror} failed (exit {run.returncode});"
                f" last lines of {BUILD_LOG}:\n{_tail(BUILD_LOG)}"
            )
        _import_tree(client, tag, rootfs)
    finally:
        shutil.rmtree(workdir)


def _import_tree(client: docker.DockerClient, tag: str, rootfs: Path) -> None:
    """Stream ``tar -C rootfs -c .`` into the engine as image ``tag``."""
    excludes = [f"--exclude={pattern}" for pattern in BASE_EXCLUDES]
    command = ["tar", "--numeric-owner", *excludes, "-C", str(rootfs), "-c", "."]
    with (
        tempfile.TemporaryFile() as tar_errors,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=tar_errors) as tar,
    ):
        assert tar.stdout is not None
        _import(client, tag, _chunks(tar.stdout), BASE_CHANGES)
        if tar.wait() != 0:
            client.images.remove(tag)
            tar_errors.seek(0)
            raise ImageBuildError(
                f"tar of {rootfs} failed (exit {tar.returncode}), so {tag} was incomplete and"
                f" is removed:\n{tar_errors.read().decode(errors='replace')}"
            )


def _chunks(stream: IO[bytes]) -> Iterator[bytes]:
    while chunk := stream.read(1 << 20):
        yield chunk


def _import(
    client: docker.DockerClient, tag: str, chunks: Iterator[bytes], changes: tuple[str, ...]
) -> None:
    """Import a root filesystem tar, streamed as byte chunks, as image ``tag``."""
    repository, version = tag.split(":")
    try:
        reply = client.api.import_image_from_stream(
            chunks, repository=repository, tag=version, changes=list(changes)
        )
    except DockerException as error:
        raise ImageBuildError(f"the Docker engine refused to import {tag}: {error}") from error
    for line in str(reply).splitlines():
        message = json.loads(line) if line.strip() else {}
        if "error" in message:
            raise ImageBuildError(f"the Docker engine failed to import {tag}: {message['error']}")
    if not _exists(client, tag):
        raise ImageBuildError(f"the Docker engine imported {tag} but does not list it: {reply}")


def _busybox_tar(binary: bytes) -> bytes:
    """Return a tar holding ``bin/busybox``, its applet symlinks and an empty ``tmp``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, mode in (("bin", 0o755), ("tmp", 0o1777)):
            directory = tarfile.TarInfo(name)
            directory.type, directory.mode = tarfile.DIRTYPE, mode
            tar.addfile(directory)
        member = tarfile.TarInfo("bin/busybox")
        member.size, member.mode = len(binary), 0o755
        tar.addfile(member, io.BytesIO(binary))
        for applet in BUSYBOX_APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    return buffer.getvalue()


def _is_static_elf(binary: bytes) -> bool:
    """Tell whether ``binary`` is a 64-bit little-endian ELF file with no program interpreter."""
    if binary[:6] != b"\x7fELF\x02\x01":
        return False
    offset = int.from_bytes(binary[0x20:0x28], "little")
    size = int.from_bytes(binary[0x36:0x38], "little")
    count = int.from_bytes(binary[0x38:0x3A], "little")
    headers = range(offset, offset + count * size, size)
    return all(int.from_bytes(binary[at : at + 4], "little") != _PT_INTERP for at in headers)


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    """Yield the stanzas of a deb822 file as {lower-case field: value}, comments dropped."""
    fields: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields = {}
        elif line[0] in " \t":
            if name in fields:
                fields[name] += "\n" + line.strip()
        else:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            fields[name] = value.strip()
    if fields:
        yield fields


def _digest(recipe: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _tail(path: Path, lines: int = 20) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def demo_image_env() -> dict[str, str] | None:
    """``{"FARM_DEMO_IMAGE": tag}`` of the base image the demo's container task runs in.

    Builds the image when missing; prints why and returns None when it cannot.
    """
    try:
        client = docker.from_env()
    except DockerException as error:
        print(f"demo: the example build runs a container task and needs a Docker engine: {error}")
        return None
    try:
        print("demo: making sure the demo image exists (the first build takes a minute or two)")
        return {"FARM_DEMO_IMAGE": ensure_base_image(client)}
    except (ImageBuildError, DockerException) as error:
        print(f"demo: cannot build the demo image: {error}")
        return None
    finally:
        client.close()


def add_image_command(commands: Any) -> None:
    """Add ``buildbot-farm image build {base,busybox}`` to the command line's subcommands."""
    image = commands.add_parser("image", help="build the images container tasks run in")
    image.add_argument("action", choices=["build"])
    image.add_argument("which", choices=["base", "busybox"])
    image.set_defaults(handler=_image_command)


def _image_command(args: Any) -> int:
    try:
        client = docker.from_env()
        build = ensure_base_image if args.which == "base" else ensure_busybox_image
        print(build(client))
    except (ImageBuildError, DockerException) as error:
        print(f"buildbot-farm: {error}", file=sys.stderr)
        return 2
    return 0
