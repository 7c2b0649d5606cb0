"""Drift: an applied migration whose file changed since it was applied.

Compares the content checksum dbkit recorded at apply time with the file on disk now:
``edited`` (same name, other content), ``renamed`` (the name is gone, its content is now under
another, not yet applied name — which yoyo would run a second time), ``deleted`` (gone).
Migrations applied by yoyo's CLI have no recorded checksum: ``unverified`` until dbkit
records one (``dbkit migrate`` does, trusting the file as it is then).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from dbkit.errors import ConfigError
from dbkit.ledger import State
from dbkit.migration_files import MigrationFile

if TYPE_CHECKING:
    from dbkit.settings import Settings
    from dbkit.urls import DbURL


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


def accept(settings: Settings, ids: list[str], *, url: DbURL | None = None,
           dbname: str | None = None) -> list[str]:
    """Flyway's ``repair`` for edited files: each named applied migration's file as it is now
    becomes its recorded version (after a deliberate, harmless edit such as a comment), so
    ``verify`` passes again. Under the migration lock; a ``accept`` row goes to history.
    Returns the ids whose recorded checksum changed (none on a second run)."""
    from dbkit import migrate as m

    directory, files, target, limits = m._prologue(settings, None, url, dbname)
    by_id = {f.id: f for f in files}
    for mid in ids:
        if mid not in by_id:
            raise ConfigError(f"--accept {mid}: no migration file with that id in {directory}",
                              hint="a renamed file cannot be accepted: give it its old name back")
    changed: list[str] = []
    with m._locked(target, settings, limits) as runner:
        state = runner.prepare(files)
        applied = {a.id for a in state.applied}
        for mid in ids:
            if mid not in applied:
                raise ConfigError(f"--accept {mid}: not applied, so there is nothing to accept",
                                  hint="dbkit migrate applies it")
            if state.checksums.get(mid) != by_id[mid].checksum:
                runner.accept(by_id[mid])
                changed.append(mid)
    return changed
