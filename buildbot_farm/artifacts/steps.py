"""``steps.ArtifactToken``, ``steps.ArtifactUpload`` and ``steps.ArtifactDownload``."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

from buildbot.process import buildstep, remotecommand, remotetransfer
from buildbot.process.results import FAILURE, SUCCESS
from buildbot.steps.transfer import FileDownload

from buildbot_farm.artifacts import paths, tokens
from buildbot_farm.artifacts.paths import UnsafePath
from buildbot_farm.artifacts.repository import Repository
from buildbot_farm.artifacts.storage import StorageError

FARM_SERVICE = "farm"
ARTIFACTS_PROPERTY = "farm_artifacts"
MAX_LINKS = 20


class NoRepository(Exception):
    """The farm service runs without an artifact repository."""


def find_repository(master: Any) -> Repository:
    """The running repository of the master's farm service, or :class:`NoRepository`."""
    farm = master.service_manager.namedServices.get(FARM_SERVICE)
    host = getattr(farm, "artifacts", None)
    repository = getattr(host, "repository", None)
    if repository is None:
        raise NoRepository(
            "no artifact repository: give util.FarmService(artifacts=util.ArtifactRepository())"
            " in master.cfg"
        )
    return repository


def _project(step: buildstep.BuildStep, project: str | None) -> str:
    return project or step.build.builder.name


class ArtifactToken(buildstep.BuildStep):
    """Mint this build's upload token and give it to later steps.

    Sets the environment of every later command: ``FARM_ARTIFACT_TOKEN`` (the token, hidden
    in logs as ``<FARM_ARTIFACT_TOKEN>``), ``FARM_ARTIFACT_USER`` (``build-ID``) and
    ``FARM_ARTIFACT_URL`` (the build's directory for ``kind``); the last two are also
    properties. Upload with ``curl -u "$FARM_ARTIFACT_USER:$FARM_ARTIFACT_TOKEN" -T FILE
    "$FARM_ARTIFACT_URL/FILE"``. The token dies when the build finishes.
    """

    name = "artifact token"
    renderables = ["kind", "project"]

    def __init__(self, kind: str = "bin", project: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind = kind
        self.project = project

    async def run(self) -> int:
        """Mint the token and publish it to the build."""
        try:
            repository = find_repository(self.master)
            project = _project(self, self.project)
            number = self.build.number
            token = await repository.mint(self.build.buildid, project, number)
            prefix = repository.build_prefix(self.kind, project, number)
        except (NoRepository, UnsafePath) as e:
            await self.addCompleteLog("error", f"{e}\n")
            return FAILURE
        self.build.properties.useSecret(token, "FARM_ARTIFACT_TOKEN")
        url = repository.url_for(prefix, collection=True).rstrip("/")
        user = tokens.user_for(self.build.buildid)
        self.build.env.update(
            {"FARM_ARTIFACT_TOKEN": token, "FARM_ARTIFACT_USER": user, "FARM_ARTIFACT_URL": url}
        )
        self.setProperty("FARM_ARTIFACT_URL", url, "ArtifactToken")
        self.setProperty("FARM_ARTIFACT_USER", user, "ArtifactToken")
        self.descriptionDone = [f"token for /{paths.join(prefix)}/"]
        return SUCCESS


class ArtifactUpload(buildstep.BuildStep):
    """Upload a file or directory from the worker into the build's artifact directory.

    The files travel through Buildbot's transfer protocol, land under
    ``{kind}/{project}/{build}/dest`` (a file keeps its name when ``dest`` is empty or ends in
    ``/``), get their sha256 recorded, a link on the build page, and an entry
    ``{"path", "url", "size", "sha256"}`` appended to the ``farm_artifacts`` property.
    """

    name = "upload artifacts"
    renderables = ["workersrc", "dest", "kind", "project", "workdir"]

    def __init__(
        self, workersrc: str, dest: str = "", kind: str = "bin", project: str | None = None,
        maxsize: int | None = None, **kwargs: Any,
    ) -> None:
        kwargs.setdefault("haltOnFailure", True)
        super().__init__(**kwargs)
        self.workersrc = workersrc
        self.dest = dest
        self.kind = kind
        self.project = project
        self.maxsize = maxsize

    async def run(self) -> int:
        """Transfer, store, record."""
        self.stdio_log = await self.addLog("stdio")
        try:
            repository = find_repository(self.master)
            prefix = repository.build_prefix(self.kind, _project(self, self.project),
                                             self.build.number)
            dest = paths.split(self.dest)
        except (NoRepository, UnsafePath) as e:
            await self.stdio_log.addStderr(f"{e}\n")
            return FAILURE
        mode = await self._worker_mode()
        if mode is None or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            await self.stdio_log.addStderr(f"{self.workersrc} is not a file or directory on"
                                           " the worker\n")
            return FAILURE
        staging: Path = await repository.run_in_thread(repository.storage.thd_staging_dir)
        try:
            return await self._upload(repository, prefix, dest, staging, stat.S_ISDIR(mode))
        finally:
            await repository.run_in_thread(shutil.rmtree, staging, True)

    async def _worker_mode(self) -> int | None:
        cmd = remotecommand.RemoteCommand("stat", {"file": self.workersrc, "workdir": self.workdir})
        await self.runCommand(cmd)
        if cmd.rc != 0:
            return None
        return int(cmd.updates["stat"][-1][stat.ST_MODE])

    async def _upload(
        self, repository: Repository, prefix: tuple[str, ...], dest: tuple[str, ...],
        staging: Path, is_dir: bool,
    ) -> int:
        target = staging / "tree" if is_dir else staging / "file"
        writer: Any
        if is_dir:
            writer = remotetransfer.DirectoryWriter(str(target), self.maxsize, False, 0o600)
            command = "uploadDirectory"
        else:
            writer = remotetransfer.FileWriter(str(target), self.maxsize, 0o600)
            command = "uploadFile"
        args = {"workersrc": self.workersrc, "workdir": self.workdir, "writer": writer,
                "maxsize": self.maxsize, "blocksize": 256 * 1024}
        if is_dir:
            args["compress"] = None
        cmd = remotecommand.RemoteCommand(command, args, decodeRC={None: SUCCESS, 0: SUCCESS})
        cmd.useLog(self.stdio_log)
        try:
            await self.runCommand(cmd)
        finally:
            writer.cancel()
        if cmd.results() >= FAILURE:
            writer.purge()
            return FAILURE
        if is_dir:
            files = sorted(p for p in target.rglob("*") if p.is_file())
            placed = [(f, (*prefix, *dest, *f.relative_to(target).parts)) for f in files]
        else:
            name = dest if dest and not self.dest.endswith("/") else (
                *dest, os.path.basename(self.workersrc.rstrip("/"))
            )
            placed = [(target, (*prefix, *name))]
        result = await publish_files(self, self.stdio_log, repository, prefix, placed)
        if result == SUCCESS:
            self.descriptionDone = [f"uploaded {len(placed)} artifact(s)"]
        return result


async def publish_files(
    step: buildstep.BuildStep, log: Any, repository: Repository, prefix: tuple[str, ...],
    placed: list[tuple[Path, tuple[str, ...]]],
) -> int:
    """Move files a step staged on the master into the repository and tell the build.

    Each ``(staged file, repository path)`` is stored and indexed under ``prefix``, its
    sha256 and URL written to ``log``, linked from the build page, and appended to the
    ``farm_artifacts`` property. Returns the step result.
    """
    records = []
    for staged, segments in placed:
        try:
            paths.split(paths.join(segments))
            stored = await repository.import_staged(staged, segments, prefix, step.build.buildid)
        except (UnsafePath, StorageError) as e:
            await log.addStderr(f"/{paths.join(segments)}: {e}\n")
            return FAILURE
        url = repository.url_for(segments)
        records.append({"path": paths.join(segments), "url": url, "size": stored.size,
                        "sha256": stored.sha256})
        await log.addStdout(f"{stored.sha256}  {url}\n")
    for (_, segments), record in zip(placed[:MAX_LINKS], records):
        await step.addURL(segments[-1], record["url"])
    if len(records) > MAX_LINKS:
        await step.addURL(f"all {len(records)} files", repository.url_for(prefix, collection=True))
    before = step.getProperty(ARTIFACTS_PROPERTY) or []
    step.setProperty(ARTIFACTS_PROPERTY, [*before, *records], step.name)
    return SUCCESS


class ArtifactDownload(FileDownload):
    """Download one artifact file from the repository to the worker.

    ``src`` is its repository path (``bin/hello-farm/12/hello.pyz``), read on the master
    from the repository's storage; ``workerdest`` as for ``steps.FileDownload``.
    """

    name = "download artifact"
    renderables = ["src"]

    def __init__(self, src: str, workerdest: str, **kwargs: Any) -> None:
        super().__init__(mastersrc="", workerdest=workerdest, **kwargs)
        self.src = src

    async def run(self) -> int:
        """Find the file in the repository, then download it like FileDownload."""
        try:
            repository = find_repository(self.master)
            segments = paths.split(self.src)
            entry = await repository.stat(segments)
        except (NoRepository, UnsafePath, StorageError) as e:
            await self.addCompleteLog("stderr", f"{e}\n")
            return FAILURE
        if entry is None or entry.is_dir:
            await self.addCompleteLog("stderr", f"no artifact file at /{self.src}\n")
            return FAILURE
        self.mastersrc = str(repository.storage.path_of(segments))
        result: int = await super().run()
        return result
