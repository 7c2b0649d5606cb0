"""``dbkit dump``: the application's schema as SQL, for review and diffs (dbmate's ``dump``).

pg_dump --schema-only as the DATABASE_URL role, without dbkit's and yoyo's bookkeeping tables,
followed by the list of applied migrations: a file that changes exactly when the schema or the
migration state does. The password reaches pg_dump through PGPASSWORD, never its arguments.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbkit.errors import ConfigError, ServerError
from dbkit.ledger import ALL_TABLES

if TYPE_CHECKING:
    from dbkit.settings import Settings


@dataclass
class DumpResult:
    database: str  # masked
    sql: str
    applied: list[str]
    file: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"database": self.database, "file": self.file, "applied": self.applied,
                "sql": self.sql if self.file is None else None}


def dump(settings: Settings, file: Path | None = None) -> DumpResult:
    import psycopg

    from dbkit.db import connect
    from dbkit.ledger import read_state
    from dbkit.server import GET_BINARIES, find_pg_bin

    url = settings.migration_url()
    with connect(url, settings) as conn:  # a clear error for a wrong URL, before pg_dump
        applied = [a.id for a in read_state(conn).applied]
    pg_dump = find_pg_bin(settings.pg_bin) / "pg_dump"
    if not pg_dump.exists():
        raise ServerError(f"no pg_dump next to initdb in {pg_dump.parent}", hint=GET_BINARIES)
    kw = url.connect_kwargs()
    password = kw.pop("password", None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if password is not None:
        env["PGPASSWORD"] = password
    args = [str(pg_dump), "--schema-only", "--no-owner", "--no-privileges", "--encoding=UTF8",
            "-d", psycopg.conninfo.make_conninfo(**kw)]
    args += [f"--exclude-table={t}" for t in sorted(ALL_TABLES)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        first = next((ln for ln in proc.stderr.splitlines() if ln.strip()), "failed")
        raise ServerError(f"pg_dump failed: {first.removeprefix('pg_dump: error: ')}",
                         hint="a pg_dump older than the server refuses: set DBKIT_PG_BIN to a "
                         "newer PostgreSQL's bin directory")
    # pg_dump 15.14+ wraps its output in \restrict <random key>: drop it, or every dump differs
    lines = [ln for ln in proc.stdout.splitlines()
             if not ln.startswith(("\\restrict", "\\unrestrict"))]
    lines += ["", "-- Applied migrations (dbkit):"] + [f"--   {mid}" for mid in applied]
    text = "\n".join(lines).strip("\n") + "\n"
    if file is not None:
        try:
            file.write_text(text)
        except OSError as exc:
            raise ConfigError(f"cannot write {file}: {exc.strerror}",
                             hint="choose a writable path") from None
    return DumpResult(database=str(url), sql=text, applied=applied,
                      file=str(file) if file is not None else None)
