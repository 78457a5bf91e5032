"""FarmLatentWorker's own arguments: what ``checkConfig`` refuses, naming the argument."""

from __future__ import annotations

from typing import Any

import pytest

from buildbot_farm.leases.worker_settings import LEASE_ARGS, LeaseSettings


@pytest.mark.parametrize("value", [-1, float("inf"), True, "30"])
def test_start_on_request_must_be_seconds_at_least_0(value: Any) -> None:
    """A negative, infinite, boolean or text start_on_request is refused with what it takes."""
    assert LeaseSettings(start_on_request=value).problems() == [
        "start_on_request must be a number of seconds >= 0"
    ]


def test_start_on_request_is_an_argument_and_0_is_allowed() -> None:
    """start_on_request is one of the worker's arguments; 0 (off) and the default are fine."""
    assert "start_on_request" in LEASE_ARGS
    assert LeaseSettings(start_on_request=0).problems() == []
    assert LeaseSettings().problems() == []
