"""Run every ``benchmarks/bench_*.py`` module (or the ones named) and print their tables.

Each module has ``main() -> None`` that measures, prints a table of what it measured
(the figures side by side, with ratios), and cleans up after itself. Each runs in a
process of its own: a Twisted reactor runs only once per process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main(names: list[str]) -> int:
    """Run the named benchmark modules, or all of them; return non-zero if one failed."""
    here = Path(__file__).parent
    modules = names or sorted(p.stem for p in here.glob("bench_*.py"))
    failed = []
    for name in modules:
        print(f"\n== {name} ==", flush=True)
        code = f"import benchmarks.{name} as bench; bench.main()"
        if subprocess.run([sys.executable, "-c", code], check=False).returncode != 0:
            print(f"{name} failed", flush=True)
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
