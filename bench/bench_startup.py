"""Startup: ``dbkit --help`` against ``python -c "import click"`` (the floor for a click CLI)."""

from __future__ import annotations

import subprocess
import sys

from bench.common import interleaved, save, table


def main(runs: int = 10) -> list[dict[str, object]]:
    def run(*args: str) -> None:
        subprocess.run([sys.executable, *args], check=True, capture_output=True)

    times = interleaved({
        "dbkit --help": lambda: run("-m", "dbkit", "--help"),
        "import click": lambda: run("-c", "import click"),
        "python -c pass": lambda: run("-c", "pass"),
    }, runs=runs)
    rows = table("Startup", [("dbkit --help vs import click", "dbkit --help", "import click"),
                             ("dbkit --help vs bare python", "dbkit --help", "python -c pass")],
                 times)
    save("startup", rows)
    return rows


if __name__ == "__main__":
    main()
