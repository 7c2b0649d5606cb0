""".env files: read as python-dotenv reads them, written back one key at a time.

dbkit writes a generated password to ``.env`` (``DATABASE_URL``, ``DBKIT_APP_URL``) and nowhere
else, so writing is careful: every other line and comment is kept, the file is replaced by
rename (a crash never leaves half a file) and it is private to its owner (mode 0600).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from dbkit.errors import ConfigError

log = logging.getLogger("dbkit")

_KEY = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


def read(path: Path, required: bool = False) -> dict[str, str]:
    """The file's variables (none when it does not exist, unless ``required``)."""
    if not path.exists():
        if required:
            raise ConfigError(f"env file {path} does not exist", hint="check --env-file")
        return {}
    from dotenv import dotenv_values

    try:
        return {k: v for k, v in dotenv_values(path).items() if v is not None}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.__class__.__name__}") from None


def warn_unparsable(path: Path) -> None:
    """python-dotenv skips a line it cannot parse without a word; say which one, or a broken
    DATABASE_URL line reads as 'DATABASE_URL is not set'."""
    if not path.is_file():
        return
    from dotenv.parser import parse_stream

    try:
        with path.open(encoding="utf-8") as f:
            bad = [b.original.line for b in parse_stream(f) if b.error]
    except (OSError, UnicodeDecodeError):
        return  # read() has already said so
    for line in bad:
        log.warning("%s:%d: cannot parse this line; it is ignored", path, line)


def check_writable(path: Path) -> None:
    """Fail before anything is created whose secret would then have nowhere to go."""
    if path.exists() and not path.is_file():
        raise ConfigError(f"env file {path} is not a regular file",
                          hint="remove or rename it, or choose another with --env-file")
    where = path if path.exists() else path.parent
    if not os.access(where, os.W_OK) or not path.parent.is_dir():
        raise ConfigError(f"env file {path} cannot be written",
                          hint="make it writable, or choose another with --env-file")


def update(path: Path, key: str, value: str) -> None:
    """Set ``key``, keeping every other line and comment; mode 0600, replaced atomically."""
    check_writable(path)
    try:
        _write(path, key, value)
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise ConfigError(f"cannot write env file {path}: {why}",
                          hint="make it a writable file, or choose another with --env-file"
                          ) from None


def _write(path: Path, key: str, value: str) -> None:
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    new_line = f"{key}='{value}'\n" if "'" not in value else f'{key}="{value}"\n'
    for i, line in enumerate(lines):
        m = _KEY.match(line)
        if m and m.group(1) == key:
            lines[i] = new_line
            break
    else:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines.append(new_line)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".env.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
