"""Lint: ``dbkit lint`` on 1,000 and 2,000 generated migrations, a quarter of them VALIDATEs of
constraints that earlier files added NOT VALID, against squawk (PyPI squawk-cli) on the same
files in the same run.

Two numbers matter (issue 15): the growth ratio (time for 2x the files / time for the files,
linear means about 2, the goal is <= 2.2) and dbkit's wall time against squawk's (goal: within
3x). Both are measured for the whole process (what a CI job pays, Python's start included) and,
for the growth, for the lint itself in-process (the start is a constant that hides growth)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.common import interleaved, median, save, table

SIZES = (1000, 2000)


def generate(folder: Path, n: int) -> None:
    """n migrations in cycles of four on one table: create it (with an index), add a CHECK ...
    NOT VALID, add a column and change a type, then VALIDATE the CHECK and SET NOT NULL (the
    two-migration pattern, which makes dbkit look up what the earlier files left)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k, kind = divmod(i, 4)
        t = f"t{k:05d}"
        body = (
            f"CREATE TABLE {t} (id bigint PRIMARY KEY, a int, b varchar(50));\n"
            f"CREATE INDEX {t}_b ON {t} (b);\n",
            f"ALTER TABLE {t} ADD CONSTRAINT {t}_a_nn CHECK (a IS NOT NULL) NOT VALID;\n",
            f"ALTER TABLE {t} ADD COLUMN c text;\nALTER TABLE {t} ALTER COLUMN b TYPE text;\n",
            f"ALTER TABLE {t} VALIDATE CONSTRAINT {t}_a_nn;\n"
            f"ALTER TABLE {t} ALTER COLUMN a SET NOT NULL;\n",
        )[kind]
        (folder / f"{i:05d}_step.sql").write_text(body)


def _squawk() -> str | None:
    found = Path(sys.executable).with_name("squawk")
    return str(found) if found.exists() else shutil.which("squawk")


def main(runs: int = 7) -> list[dict[str, object]]:
    from dbkit.lint.engine import lint_paths

    squawk = _squawk()
    with tempfile.TemporaryDirectory(prefix="dbkit-bench-lint-") as tmp:
        dirs = {n: Path(tmp) / str(n) for n in SIZES}
        for n, folder in dirs.items():
            generate(folder, n)
            assert lint_paths([folder]) == [], "the generated migrations should lint clean"
        files = {n: sorted(str(f) for f in folder.glob("*.sql")) for n, folder in dirs.items()}

        def dbkit(n: int) -> None:
            proc = subprocess.run([sys.executable, "-m", "dbkit", "lint", str(dirs[n])],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr

        def peer(n: int) -> None:
            assert squawk is not None
            # squawk exits 1 when it has findings (it does on these files): only the time counts
            subprocess.run([squawk, *files[n]], capture_output=True)

        cases: dict[str, Callable[[], object]] = {
            "python": lambda: subprocess.run([sys.executable, "-c", "pass"], check=True)}
        for n in SIZES:
            cases[f"dbkit {n}"] = lambda n=n: dbkit(n)
            cases[f"in-process {n}"] = lambda n=n: lint_paths([dirs[n]])
            if squawk:
                cases[f"squawk {n}"] = lambda n=n: peer(n)
        times = interleaved(cases, runs=runs)

    rows: list[dict[str, object]] = []
    if squawk:
        rows += table("Lint: dbkit lint against squawk (whole process, same files)",
                      [(f"{n} files", f"dbkit {n}", f"squawk {n}") for n in SIZES], times)
    else:
        print("\nsquawk is not installed (pip install squawk-cli): no comparison with it")
    lo, hi = SIZES
    # the machine is shared: the fastest run is the one least disturbed, so the growth is
    # given from medians and from minimums
    print(f"\n## Lint: growth from {lo} to {hi} files (linear: 2.0x, goal <= 2.2x)\n")
    print("| what | growth (medians) | growth (fastest runs) |")
    print("|---|---:|---:|")
    growth: dict[str, float] = {}
    for what in ("dbkit", "in-process") + (("squawk",) if squawk else ()):
        growth[what] = median(times[f"{what} {hi}"]) / median(times[f"{what} {lo}"])
        fastest = min(times[f"{what} {hi}"]) / min(times[f"{what} {lo}"])
        growth[f"{what}, fastest runs"] = fastest
        print(f"| {what} | {growth[what]:.2f}x | {fastest:.2f}x |")
    start = median(times["python"])
    net = {n: median(times[f"dbkit {n}"]) - start for n in SIZES}
    growth["dbkit without python's start"] = net[hi] / net[lo]
    print(f"| dbkit without python's start | {net[hi] / net[lo]:.2f}x | |")
    if squawk:
        vs = median(times[f"dbkit {hi}"]) / median(times[f"squawk {hi}"])
        print(f"\ndbkit / squawk wall time on {hi} files: {vs:.2f}x (goal: <= 3x)")
        rows.append({"what": f"dbkit / squawk wall time, {hi} files", "ratio": round(vs, 3)})
    rows += [{"what": f"growth {lo} -> {hi} files, {k}", "ratio": round(v, 3)}
             for k, v in growth.items()]
    save("lint", rows)
    return rows


if __name__ == "__main__":
    main()
