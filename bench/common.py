"""Shared benchmark machinery: interleaved runs, medians, ratios against a floor measured in the
same run (the machine is shared and noisy, so only ratios are comparable), JSON results."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dbkit.urls import DbURL

RESULTS = Path(__file__).resolve().parent / "results"
# The throwaway cluster is the test suite's (tests/cluster.py), not part of the installed
# package: the benchmarks run from a checkout and import it from there.
TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def interleaved(cases: dict[str, Callable[[], object]], runs: int = 5, warmup: int = 1,
                setup: Callable[[str], object] | None = None) -> dict[str, list[float]]:
    """Run every case ``runs`` times, round-robin, so drift on the machine hits all alike.
    ``setup(name)`` runs untimed before each timed call."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(warmup + runs):
        for name, fn in cases.items():
            if setup:
                setup(name)
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def table(title: str, rows: list[tuple[str, str, str]], times: dict[str, list[float]],
          unit: str = "ms", higher_is_better: bool = False, values: dict[str, float] | None = None
          ) -> list[dict[str, object]]:
    """Print one markdown table. rows: (label, dbkit case, comparison case).

    The ratio is always a speed ratio (> 1: dbkit is faster): comparison/dbkit for times,
    dbkit/comparison for rates (``higher_is_better``). ``values`` replaces medians of ``times``
    with precomputed numbers (e.g. rows/s)."""
    scale = 1000.0 if unit == "ms" else 1.0
    out = []
    print(f"\n## {title}\n")
    print(f"| what | dbkit ({unit}) | comparison ({unit}) | speed ratio (>1: dbkit faster) |")
    print("|---|---:|---:|---:|")
    for label, mine, other in rows:
        a = values[mine] if values else median(times[mine]) * scale
        b = values[other] if values else median(times[other]) * scale
        ratio = (a / b) if higher_is_better else (b / a)
        print(f"| {label} | {a:,.1f} | {b:,.1f} | {ratio:.2f}x |")
        out.append({"what": label, "dbkit": a, "comparison": b, "unit": unit,
                    "speed_ratio": round(ratio, 3)})
    return out


def save(name: str, data: object) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": platform.platform(), "when": time.strftime("%F %T"),
                                "results": data}, indent=2, default=str))
    return path


@contextmanager
def cluster(url: str | None = None) -> Iterator[DbURL]:
    """A throwaway cluster (dbkit's own code) unless a URL is given; yields the admin DbURL."""
    from cluster import throwaway_cluster

    with throwaway_cluster(url) as admin:
        yield admin
