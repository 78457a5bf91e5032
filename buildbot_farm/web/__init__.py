"""The farm's HTTP face: resources mounted at ``/plugins/farm/`` in Buildbot's web server."""

from __future__ import annotations

from buildbot_farm.web._json import json_error, json_response
from buildbot_farm.web._request import BadRequest
from buildbot_farm.web._root import FarmRoot

__all__ = ["BadRequest", "FarmRoot", "json_error", "json_response"]
