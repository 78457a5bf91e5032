"""``buildbot-farm verify``: check a provenance envelope's signature, or the records' hash chain.

``buildbot-farm verify FILE --public-key K`` checks one envelope; ``buildbot-farm verify
--chain URL`` walks the whole hash chain of records and tombstones through the records-chain
API (``URL`` is ``.../plugins/farm/api/records-chain``) and names the first entry that was
altered, removed or inserted out of order.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from buildbot_farm.records.chain import verify_entries
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


class _ChainUnreadable(Exception):
    """The chain API could not be read (network, HTTP status or JSON)."""


def _pages(url: str, timeout: float) -> Iterator[dict[str, Any]]:
    """Every entry the records-chain API at ``url`` serves, following ``next``."""
    page_url: str | None = url
    while page_url is not None:
        try:
            with urllib.request.urlopen(page_url, timeout=timeout) as answer:
                page = json.loads(answer.read())
            entries, more = page["entries"], page["next"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise _ChainUnreadable(f"{page_url}: {e}") from e
        yield from entries
        page_url = None if more is None else urllib.parse.urljoin(url, str(more))


def verify_chain(url: str, timeout: float = 60.0) -> int:
    """Walk the chain at ``url``; print the result or the first break; return the exit code."""
    try:
        count, head, broken = verify_entries(_pages(url, timeout))
    except _ChainUnreadable as e:
        print(f"buildbot-farm verify: cannot read the chain: {e}", file=sys.stderr)
        return 2
    if broken is not None:
        print(f"buildbot-farm verify: {url}: NOT VERIFIED after {count} good entries: {broken}",
              file=sys.stderr)
        return 1
    print(f"{url}: verified: {count} entries, chain head {head}")
    return 0


def _command(args: argparse.Namespace) -> int:
    if args.chain is not None:
        return verify_chain(args.chain)
    if args.file is None or args.public_key is None:
        print("buildbot-farm verify: give FILE --public-key KEY, or --chain URL", file=sys.stderr)
        return 2
    return verify_file(Path(args.file), Path(args.public_key))


def add_verify_command(commands: Any) -> None:
    """Add ``verify`` to the ``buildbot-farm`` subcommands."""
    verify = commands.add_parser(
        "verify",
        help="check a build record's signed provenance (a DSSE envelope), or the records' chain",
    )
    verify.add_argument(
        "file", nargs="?", help="the envelope, as GET /builds/NAME/VERSION/provenance gave it"
    )
    verify.add_argument(
        "--public-key", help="PEM Ed25519 public key (records-signing-key.pem.pub)"
    )
    verify.add_argument(
        "--chain", metavar="URL",
        help="walk the hash chain of every record and tombstone at URL"
        " (http://MASTER/plugins/farm/api/records-chain); exit 1 at the first broken entry",
    )
    verify.set_defaults(handler=_command)
