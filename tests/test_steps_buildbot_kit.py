"""Each step class of the farm under Buildbot's own step test kit (``TestBuildStepMixin``).

The worker's side is Buildbot's fake (``expect_commands``); the farm's side is real: a
FarmService on Buildbot's fake master with an artifact repository on an in-memory database.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from buildbot.process import remotetransfer
from buildbot.process.properties import Property
from buildbot.process.results import FAILURE, SUCCESS
from buildbot.test.reactor import TestReactorMixin
from buildbot.test.steps import (
    ExpectDownloadFile,
    ExpectRemoteRef,
    ExpectStat,
    ExpectUploadFile,
    TestBuildStepMixin,
)
from twisted.trial import unittest

from buildbot_farm.artifacts.build_tokens import TokenUnavailable
from buildbot_farm.artifacts.config import ArtifactRepository
from buildbot_farm.artifacts.repository import Repository
from buildbot_farm.artifacts.steps import ArtifactDownload, ArtifactToken, ArtifactUpload
from buildbot_farm.containers import ContainerTask
from buildbot_farm.names import ARTIFACTS_PROPERTY
from buildbot_farm.service import FarmService

PUBLIC = "http://farm.test/artifacts/"
BLOCKSIZE = 256 * 1024


class StepKitTests(TestBuildStepMixin, TestReactorMixin, unittest.TestCase):
    """The farm's steps under TestBuildStepMixin: the worker is Buildbot's fake, the FarmService and
    repository are real."""

    # Trial awaits what setUp returns; typeshed types unittest.TestCase.setUp as returning None.
    async def setUp(self) -> None:  # type: ignore[override]
        """Set up the test reactor and Buildbot's step harness, its fake master with an mq."""
        self.setup_test_reactor()
        await self.setup_test_build_step(want_mq=True)

    async def run_steps(self) -> None:
        """``run_step()``, running the test reactor's due calls here: Buildbot's TestReactor
        hands them to the global reactor, which trial cannot spin once pytest-twisted runs it
        (a remote command completes through one)."""
        done = self.run_step()
        for _ in range(1000):
            if done.called:
                break
            self.reactor.advance(0)
        await done

    async def repository(self) -> Repository:
        """Start a FarmService with an artifact repository on the step's master."""
        basedir = tempfile.mkdtemp(prefix="farm-steps-")
        self.addCleanup(shutil.rmtree, basedir, True)
        self.master.basedir = basedir
        self.master.service_manager = self.master
        farm = FarmService(db_url="sqlite://", container_engines=(),
                           artifacts=ArtifactRepository(public_url=PUBLIC))
        await farm.setServiceParent(self.master)
        await self.master.startService()
        self.addCleanup(self.master.stopService)
        assert farm.artifacts.repository is not None
        return farm.artifacts.repository

    async def test_container_task_checks_its_rendered_arguments(self) -> None:
        """A ContainerTask whose image renders empty fails, saying why, before any engine."""
        self.setup_step(ContainerTask(image=Property("image"), command=["true"]))
        self.build.setProperty("image", "", "test")
        self.expect_outcome(result=FAILURE)
        await self.run_steps()
        shown = self.get_nth_step(0).logs["stdio"].stderr
        assert "ContainerTask: the rendered arguments are not usable" in shown
        assert "image: is required" in shown

    async def test_container_task_explains_an_engine_it_cannot_reach(self) -> None:
        """A ContainerTask on a Docker engine that does not answer fails and says what to
        check."""
        socket = Path(tempfile.mkdtemp(prefix="farm-no-engine-")) / "docker.sock"
        self.addCleanup(shutil.rmtree, socket.parent, True)
        self.setup_step(ContainerTask(image="busybox", command=["true"],
                                      docker_host=f"unix://{socket}"))
        self.expect_outcome(result=FAILURE)
        await self.run_steps()
        assert "cannot reach the Docker engine" in self.get_nth_step(0).logs["stdio"].stderr

    async def test_artifact_steps_without_a_repository_fail_saying_what_to_add(self) -> None:
        """Without a repository each artifact step fails and names the setting to add."""
        for step in (ArtifactToken(), ArtifactUpload(workersrc="out.bin"),
                     ArtifactDownload(src="bin/b/1/out.bin", workerdest="out.bin")):
            self.setup_step(step)
            self.expect_outcome(result=FAILURE)
        await self.run_steps()
        shown = [self.get_nth_step(0).logs["error"].stdout,
                 self.get_nth_step(1).logs["stdio"].stderr,
                 self.get_nth_step(2).logs["stdio"].stderr]
        assert all("util.ArtifactRepository()" in text for text in shown), shown

    async def test_token_unavailable_fails_the_build_saying_why(self) -> None:
        """TokenUnavailable (run first when a build's token could not be minted) halts the
        build with FAILURE and logs the reason it was given."""
        self.setup_step(TokenUnavailable("the farm database failed: retry shortly"))
        self.expect_outcome(result=FAILURE, state_string="no artifact token (failure)")
        self.expect_log_file("error", "the farm database failed: retry shortly\n")
        await self.run_steps()
        assert self.get_nth_step(0).haltOnFailure

    async def test_artifact_token_gives_the_build_its_token(self) -> None:
        """ArtifactToken puts the token in the environment and the user and URL in
        properties."""
        await self.repository()
        self.setup_step(ArtifactToken(project="hello"))
        self.expect_outcome(result=SUCCESS)
        self.expect_property("FARM_ARTIFACT_USER", "build-92", "ArtifactToken")
        self.expect_property("FARM_ARTIFACT_URL", f"{PUBLIC}bin/hello/13", "ArtifactToken")
        await self.run_steps()
        assert self.build.env["FARM_ARTIFACT_TOKEN"]

    async def test_artifact_upload_stores_and_records_a_worker_file(self) -> None:
        """ArtifactUpload stats the file, transfers it, stores it and records it in the
        farm_artifacts property."""
        repository = await self.repository()
        self.setup_step(ArtifactUpload(workersrc="out.bin", project="hello"))
        self.expect_commands(
            ExpectStat(file="out.bin", workdir="wkdir").stat_file().exit(0),
            ExpectUploadFile(workersrc="out.bin", workdir="wkdir", maxsize=None,
                             blocksize=BLOCKSIZE, writer=ExpectRemoteRef(
                                 remotetransfer.FileWriter))
            .upload_string(b"hello farm\n").exit(0),
        )
        self.expect_outcome(result=SUCCESS)
        self.expect_property(ARTIFACTS_PROPERTY, [{
            "path": "bin/hello/13/out.bin", "url": f"{PUBLIC}bin/hello/13/out.bin",
            "size": 11, "sha256": hashlib.sha256(b"hello farm\n").hexdigest(),
        }], "upload-artifacts")
        await self.run_steps()
        entry = await repository.stat(("bin", "hello", "13", "out.bin"))
        assert entry is not None
        assert entry.size == 11

    async def test_artifact_download_sends_a_stored_file_and_checks_its_digest(self) -> None:
        """ArtifactDownload sends the stored bytes to the worker and checks their sha256."""
        repository = await self.repository()
        staging: Path = await repository.run_in_thread(repository.storage.thd_staging_dir)
        self.addCleanup(shutil.rmtree, staging, True)
        (staging / "up").write_bytes(b"stored bytes")
        segments = ("bin", "hello", "3", "app.bin")
        await repository.import_staged(staging / "up", segments, segments[:3], 1)
        received: list[bytes] = []
        self.setup_step(ArtifactDownload(src="bin/hello/3/app.bin", workerdest="app.bin"))
        self.expect_commands(
            ExpectDownloadFile(workerdest="app.bin", workdir="wkdir", blocksize=16384,
                               maxsize=None, mode=None,
                               reader=ExpectRemoteRef(remotetransfer.FileReader))
            .download_string(received.append).exit(0),
        )
        self.expect_outcome(result=SUCCESS)
        await self.run_steps()
        assert received == [b"stored bytes"]
