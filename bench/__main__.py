"""Run every benchmark: ``python -m bench [NAME ...]`` (names: startup, migrate, seed, testdb,
setup, fleet, lint). Each prints a table of medians and speed ratios against its floor, measured
in the same run, and writes bench/results/NAME.json."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    found = sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules([str(here)])
                   if m.name.startswith("bench_"))
    wanted = argv or found
    unknown = sorted(set(wanted) - set(found))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(found)}",
              file=sys.stderr)
        return 2
    for name in wanted:
        importlib.import_module(f"bench.bench_{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
