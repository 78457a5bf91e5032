"""``buildbot-farm verify FILE --public-key K``: check a provenance envelope's signature."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from buildbot_farm.records.provenance import VerificationFailed, load_public_key, verify_envelope


def verify_file(envelope_path: Path, public_key_path: Path) -> int:
    """Verify one envelope file; print what it attests (or what is wrong); return the exit code."""
    try:
        key = load_public_key(public_key_path.read_bytes())
        envelope = json.loads(envelope_path.read_text(encoding="utf-8"))
        statement = verify_envelope(envelope, key)
    except (OSError, ValueError, VerificationFailed) as e:
        print(f"buildbot-farm verify: {envelope_path}: NOT VERIFIED: {e}", file=sys.stderr)
        return 1
    params = statement.get("predicate", {}).get("buildDefinition", {}).get(
        "externalParameters", {}
    )
    print(f"{envelope_path}: verified: {params.get('name')} {params.get('version')}")
    for subject in statement.get("subject", []):
        print(f"  {subject.get('digest', {}).get('sha256')}  {subject.get('name')}")
    return 0


def _command(args: argparse.Namespace) -> int:
    return verify_file(Path(args.file), Path(args.public_key))


def add_verify_command(commands: Any) -> None:
    """Add ``verify`` to the ``buildbot-farm`` subcommands."""
    verify = commands.add_parser(
        "verify", help="check a build record's signed provenance (a DSSE envelope)"
    )
    verify.add_argument("file", help="the envelope, as GET /builds/NAME/VERSION/provenance gave it")
    verify.add_argument(
        "--public-key", required=True, help="PEM Ed25519 public key (records-signing-key.pem.pub)"
    )
    verify.set_defaults(handler=_command)
