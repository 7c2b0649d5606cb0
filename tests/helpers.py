"""Helpers shared by test modules (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def clean_env(**env: str) -> dict[str, str]:
    """The current environment without any dbkit/libpq settings, plus ``env``."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("DBKIT_", "PG")) and k != "DATABASE_URL"}
    return {**base, **env}


def run_dbkit(cwd: Path, *args: str, input: str | None = None, timeout: float = 120,
              **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dbkit`` as a real process in ``cwd`` with a clean environment."""
    return subprocess.run([sys.executable, "-m", "dbkit", *args], cwd=cwd, env=clean_env(**env),
                          input=input, capture_output=True, text=True, timeout=timeout)
