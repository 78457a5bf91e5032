"""The images the tests run: built by buildbot_farm.images, never pulled from a registry."""

from __future__ import annotations

from buildbot_farm.images import (
    ImageBuildError,
    debian_mirror,
    ensure_base_image,
    ensure_busybox_image,
    ensure_image,
)

__all__ = [
    "ImageBuildError",
    "debian_mirror",
    "ensure_base_image",
    "ensure_busybox_image",
    "ensure_image",
]
