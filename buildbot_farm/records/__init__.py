"""Immutable build records: ``reporters.BuildRecorder``, ``util.BuildRecords``, the JSON API.

The pure parts (:mod:`.model`, :mod:`.source`, :mod:`.provenance`) import neither buildbot
nor twisted.web; :mod:`.store` holds all the SQL.
"""

from __future__ import annotations

from buildbot_farm.records.config import BuildRecords
from buildbot_farm.records.model import Binary, BuildRecord, InvalidRecord, parse_record
from buildbot_farm.records.provenance import Signer, VerificationFailed, verify_envelope
from buildbot_farm.records.store import RecordExists, RecordStore

__all__ = [
    "Binary",
    "BuildRecord",
    "BuildRecords",
    "InvalidRecord",
    "RecordExists",
    "RecordStore",
    "Signer",
    "VerificationFailed",
    "parse_record",
    "verify_envelope",
]
