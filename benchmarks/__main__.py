"""Run every ``benchmarks/bench_*.py`` module (or the ones named) and print their tables.

Each module has ``main() -> None`` that measures, prints a table of what it measured
(the figures side by side, with ratios), and cleans up after itself.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main(names: list[str]) -> int:
    """Run the named benchmark modules, or all of them; return non-zero if one failed."""
    here = Path(__file__).parent
    modules = names or sorted(p.stem for p in here.glob("bench_*.py"))
    failed = []
    for name in modules:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"\n== {name} ==", flush=True)
        try:
            module.main()
        except Exception as e:
            print(f"{name} failed: {e!r}", flush=True)
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
