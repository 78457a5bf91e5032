"""``steps.ArtifactToken``, ``steps.ArtifactUpload`` and ``steps.ArtifactDownload``."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from buildbot.process import buildstep, remotecommand, remotetransfer
from buildbot.process.results import FAILURE, SUCCESS
from buildbot.steps.transfer import FileDownload, makeStatusRemoteCommand

from buildbot_farm.artifacts import paths
from buildbot_farm.artifacts.build_tokens import NoRepository, find_repository, grant_token
from buildbot_farm.artifacts.paths import Segments, UnsafePath
from buildbot_farm.artifacts.repository import Repository
from buildbot_farm.artifacts.storage import NotFound, StorageError
from buildbot_farm.compat.buildbot_api import steps_of
from buildbot_farm.config_checks import STEP_ARGUMENTS, Configuration, checked_keywords
from buildbot_farm.names import ARTIFACTS_PROPERTY

MAX_LINKS = 20


def _project(step: buildstep.BuildStep, project: str | None) -> str:
    return project or step.build.builder.name


ADD_ARTIFACTS = "give util.FarmService(artifacts=util.ArtifactRepository()) in c['services']"


def _configuration_problems(configuration: Configuration) -> Iterator[str]:
    """The builders whose artifact steps find no artifact repository in the FarmService."""
    missing = configuration.missing_capability("artifacts")
    if missing is None:
        return
    for builder, factory in configuration.builders:
        steps = [f"{name!r} (steps.{step_class.__name__})"
                 for step_class, name in steps_of(factory)
                 if issubclass(step_class, (ArtifactToken, ArtifactUpload, ArtifactDownload))]
        if steps:
            verb = "needs" if len(steps) == 1 else "need"
            yield (f"builder {builder!r}: step{'s' if len(steps) > 1 else ''}"
                   f" {', '.join(steps)} {verb} the artifact repository, but {missing}:"
                   f" {ADD_ARTIFACTS}")


@checked_keywords("steps.ArtifactToken", also=STEP_ARGUMENTS,
                  cross_checks=[_configuration_problems])
class ArtifactToken(buildstep.BuildStep):
    """Mint this build's upload token and give it to later steps.

    Sets the environment of every later command: ``FARM_ARTIFACT_TOKEN`` (the token, hidden
    in logs as ``<FARM_ARTIFACT_TOKEN>``), ``FARM_ARTIFACT_USER`` (``build-ID``) and
    ``FARM_ARTIFACT_URL`` (the build's directory for ``kind``); the last two are also
    properties. Upload with ``curl -u "$FARM_ARTIFACT_USER:$FARM_ARTIFACT_TOKEN" -T FILE
    "$FARM_ARTIFACT_URL/FILE"``. The token dies when the build finishes.
    """

    name = "artifact-token"
    renderables = ["kind", "project"]

    def __init__(self, kind: str = "bin", project: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind = kind
        self.project = project

    async def run(self) -> int:
        """Mint the token and publish it to the build."""
        try:
            repository = find_repository(self.master)
            prefix = await grant_token(self.build, repository, self.kind,
                                       _project(self, self.project), "ArtifactToken")
        except (NoRepository, UnsafePath) as e:
            await self.addCompleteLog("error", f"{e}\n")
            return FAILURE
        self.descriptionDone = [f"token for /{paths.join(prefix)}/"]
        return SUCCESS


@checked_keywords("steps.ArtifactUpload", also=STEP_ARGUMENTS,
                  cross_checks=[_configuration_problems])
class ArtifactUpload(buildstep.BuildStep):
    """Upload a file or directory from the worker into the build's artifact directory.

    The files travel through Buildbot's transfer protocol, land under
    ``{kind}/{project}/{build}/dest`` (a file keeps its name when ``dest`` is empty or ends in
    ``/``), get their sha256 recorded, a link on the build page, and an entry
    ``{"path", "url", "size", "sha256"}`` appended to the ``farm_artifacts`` property.
    """

    name = "upload-artifacts"
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
            files = await repository.run_in_thread(_files_under, target)
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
    placed: list[tuple[Path, tuple[str, ...]]], byproduct: bool = False,
) -> int:
    """Move files a step staged on the master into the repository and tell the build.

    Each ``(staged file, repository path)`` is stored and indexed under ``prefix``, its
    sha256 and URL written to ``log``, linked from the build page, and appended to the
    ``farm_artifacts`` property. ``byproduct`` marks them as by-products of the build's
    machinery (``"byproduct": true``), which build records keep apart from its binaries.
    Returns the step result.
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
        record = {"path": paths.join(segments), "url": url, "size": stored.size,
                  "sha256": stored.sha256}
        if byproduct:
            record["byproduct"] = True
        records.append(record)
        await log.addStdout(f"{stored.sha256}  {url}\n")
    for (_, segments), record in zip(placed[:MAX_LINKS], records):
        await step.addURL(segments[-1], record["url"])
    if len(records) > MAX_LINKS:
        await step.addURL(f"all {len(records)} files", repository.url_for(prefix, collection=True))
    before = step.getProperty(ARTIFACTS_PROPERTY) or []
    step.setProperty(ARTIFACTS_PROPERTY, [*before, *records], step.name)
    return SUCCESS


class HashingReader(remotetransfer.FileReader):
    """A FileReader that computes the sha256 of exactly the bytes it hands the worker."""

    def __init__(self, fp: BinaryIO) -> None:
        super().__init__(fp)
        self.digest = hashlib.sha256()

    def remote_read(self, maxlength: int) -> bytes:
        """Read like FileReader and add the bytes to the digest."""
        data: bytes = super().remote_read(maxlength)
        if data:
            self.digest.update(data)
        return data


# FileDownload takes these besides mastersrc (which ArtifactDownload sets) and workerdest.
@checked_keywords(
    "steps.ArtifactDownload", also=("workdir", "maxsize", "blocksize", "mode", *STEP_ARGUMENTS),
    cross_checks=[_configuration_problems],
)
class ArtifactDownload(FileDownload):
    """Download an artifact file, or every file of an artifact directory, to the worker.

    ``src`` is a repository path (``bin/hello-farm/12/hello.pyz`` or ``bin/hello-farm/12``),
    read on the master from the repository's storage (from S3, each file is first fetched
    to a staging file on the master, removed once sent or on failure). A file lands at
    ``workerdest`` as with ``steps.FileDownload``; a directory's files land under
    ``workerdest`` at their paths relative to ``src``. The sha256 of the bytes sent is
    checked against the index; a file that does not match fails the step, naming it, and
    is removed from the worker.
    """

    name = "download-artifact"
    renderables = ["src"]

    def __init__(self, src: str, workerdest: str, **kwargs: Any) -> None:
        kwargs.setdefault("haltOnFailure", True)
        super().__init__(mastersrc="", workerdest=workerdest, **kwargs)
        self.src = src

    async def run(self) -> int:
        """Find the files in the repository, send each one, check each digest."""
        self.checkWorkerHasCommand("downloadFile")
        self.stdio_log = await self.addLog("stdio")
        try:
            repository = find_repository(self.master)
            segments = paths.split(self.src)
            wanted = await self._files(repository, segments)
        except (NoRepository, UnsafePath, StorageError) as e:
            await self.stdio_log.addStderr(f"{e}\n")
            return FAILURE
        staging: Path = await repository.run_in_thread(repository.storage.thd_staging_dir)
        try:
            for relative, sha256 in wanted.items():
                dest = self.build.path_module.join(self.workerdest, *relative) if relative else (
                    self.workerdest
                )
                result = await self._send(repository, staging, (*segments, *relative), dest,
                                          sha256)
                if result != SUCCESS:
                    return result
        finally:
            await repository.run_in_thread(shutil.rmtree, staging, True)
        self.descriptionDone = [f"downloaded {len(wanted)} artifact file(s)"]
        return SUCCESS

    async def _files(
        self, repository: Repository, segments: Segments
    ) -> dict[tuple[str, ...], str]:
        """``{path relative to src: sha256}`` of the file or directory at ``src``."""
        entry = await repository.stat(segments)
        if entry is None:
            raise NotFound(f"no artifact at /{paths.join(segments)}: nothing was uploaded"
                               " there (or its retention ran out)")
        if not entry.is_dir:
            (only,) = await repository.describe(segments[:-1], [entry])
            return {(): only.sha256}
        found: dict[tuple[str, ...], str] = {}
        pending: list[tuple[str, ...]] = [()]
        while pending:
            relative = pending.pop()
            entries = await repository.list((*segments, *relative))
            for item in entries:
                if item.is_dir:
                    pending.append((*relative, item.name))
            for item_digest in await repository.describe((*segments, *relative), entries):
                found[(*relative, item_digest.entry.name)] = item_digest.sha256
        if not found:
            raise NotFound(f"the artifact directory /{paths.join(segments)}/ has no files")
        return dict(sorted(found.items()))

    async def _send(
        self, repository: Repository, staging: Path, source: Segments, dest: str, sha256: str,
    ) -> int:
        """Send the stored file ``source`` to the worker's ``dest`` (through ``staging`` when
        the storage keeps it away from the master) and check the digest of what was sent."""
        try:
            fp: BinaryIO = await repository.run_in_thread(
                repository.storage.thd_open, source, staging
            )
        except (StorageError, OSError) as e:
            await self.stdio_log.addStderr(f"cannot read /{paths.join(source)} on the master:"
                                           f" {e}\n")
            return FAILURE
        reader = HashingReader(fp)
        args = {"maxsize": self.maxsize, "reader": reader, "blocksize": self.blocksize,
                "workdir": self.workdir, "mode": self.mode, "workerdest": dest}
        cmd = makeStatusRemoteCommand(self, "downloadFile", args)
        try:
            result: int = await self.runTransferCommand(cmd)
        finally:
            reader.remote_close()
        if result != SUCCESS:
            return result
        sent = reader.digest.hexdigest()
        if sent != sha256:
            await self.stdio_log.addStderr(
                f"{dest}: the repository's copy has sha256 {sent}, but the index recorded"
                f" {sha256}; removed it from the worker\n"
            )
            builddir = self.getProperty("builddir")
            await self.runCommand(remotecommand.RemoteCommand(
                "rmfile", {"path": self.build.path_module.join(builddir, self.workdir, dest)}
            ))
            return FAILURE
        await self.stdio_log.addStdout(f"{sha256}  {dest}\n")
        return SUCCESS


def _files_under(directory: Path) -> list[Path]:
    """The regular files anywhere below ``directory``, sorted (blocking: walks the tree)."""
    return sorted(p for p in directory.rglob("*") if p.is_file())
