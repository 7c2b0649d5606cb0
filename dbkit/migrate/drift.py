"""Drift: an applied migration whose file changed since it was applied (pure: no database).

Compares the content checksum dbkit recorded at apply time with the file on disk now:
``edited`` (same name, other content), ``renamed`` (the name is gone, its content is now under
another, not yet applied name — which yoyo would run a second time), ``deleted`` (gone).
Migrations applied by yoyo's CLI have no recorded checksum: ``unverified`` until dbkit
records one (``dbkit migrate`` does, trusting the file as it is then).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dbkit.migrate.bookkeeping import State
from dbkit.migrate.files import MigrationFile


@dataclass(frozen=True)
class Drift:
    id: str
    kind: str  # edited | renamed | deleted
    file: str  # the file that differs (for renamed: the new name)
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return self.detail


def find(files: list[MigrationFile], state: State) -> tuple[list[Drift], list[str]]:
    """(drift, unverified ids) for the applied migrations in ``state``."""
    by_id = {f.id: f for f in files}
    applied_ids = {a.id for a in state.applied}
    by_checksum = {f.checksum: f for f in files if f.id not in applied_ids}
    drift: list[Drift] = []
    unverified: list[str] = []
    for a in state.applied:
        recorded = state.checksums.get(a.id)
        f = by_id.get(a.id)
        if f is None:
            moved = by_checksum.get(recorded) if recorded else None
            if moved is not None:
                drift.append(Drift(a.id, "renamed", str(moved.path),
                                   f"applied migration {a.id}.sql was renamed to {moved.path.name}"
                                   " (yoyo would apply it a second time)"))
            else:
                drift.append(Drift(a.id, "deleted", f"{a.id}.sql",
                                   f"applied migration {a.id}.sql was deleted or renamed"))
        elif recorded is None:
            unverified.append(a.id)
        elif recorded != f.checksum:
            drift.append(Drift(a.id, "edited", str(f.path),
                               f"applied migration {f.path} was edited since it was applied"))
    return drift, unverified

