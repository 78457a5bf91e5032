"""The artifact repository: public downloads, uploads only with a build's ephemeral token.

``util.ArtifactRepository(...)`` describes it (give it to ``util.FarmService(artifacts=)``);
``steps.ArtifactToken``, ``steps.ArtifactUpload`` and ``steps.ArtifactDownload`` use it.
"""

from __future__ import annotations

from buildbot_farm.artifacts.api import ArtifactResource
from buildbot_farm.artifacts.config import ArtifactRepository
from buildbot_farm.artifacts.repository import Repository, open_repository

__all__ = ["ArtifactRepository", "ArtifactResource", "Repository", "open_repository"]
