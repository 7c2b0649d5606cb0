"""Versioned migrations on yoyo's bookkeeping: migrate, rollback, status, verify, new.

Library API (the CLI in ``dbkit.cli.migrate`` is a skin over it)::

    migrations_dir(settings) -> Path
    pending_ids(settings) -> list[str]                      read-only, no lock
    status(settings) -> StatusReport                        applied (with when), pending, drift
    verify(settings) -> StatusReport                        raises DriftDetected
    ensure_up_to_date(settings)                             raises SchemaNotReady
    migrate(settings, *, to=None, dry_run=False, allow_unsafe=False) -> MigrateResult
    rollback(settings, *, steps=1, to=None, all=False, dry_run=False) -> RollbackResult
    new_migration(settings, name) -> NewResult

Every function that touches a database also takes ``url=`` (a DbURL) and/or ``dbname=`` to
work on another database than DBKIT_MIGRATE_URL / DATABASE_URL (e.g. a test template).
See docs/migrations.md for the guarantees (locking, crash safety, timeouts).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbkit.db import connect
from dbkit.drift import Drift, find
from dbkit.errors import (
    ConfigError,
    ConnectError,
    DriftDetected,
    MigrationError,
    PermissionDenied,
    SchemaNotReady,
)
from dbkit.ledger import State, read_state
from dbkit.lint import gate as lint_gate
from dbkit.migration_files import MigrationFile, discover, statements
from dbkit.migration_files import new_migration as _new_files
from dbkit.migration_lock import MIGRATE_APP, MigrationLock, with_app
from dbkit.migration_runner import Ran, Runner, Timeouts

if TYPE_CHECKING:
    from collections.abc import Iterator

    import psycopg

    from dbkit.settings import Settings
    from dbkit.urls import DbURL

PACKAGED = Path(__file__).resolve().parent / "migrations"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|h)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000}


def migrations_dir(settings: Settings) -> Path:
    """Where migrations live: ``--migrations DIR`` / DBKIT_MIGRATIONS when given (an explicit
    choice wins), else ``./migrations`` when present, else the posts migrations shipped in the
    package (so dbkit works from any directory after a plain ``pip install``)."""
    if settings.migrations:
        p = Path(settings.migrations).expanduser()
        return p if p.is_absolute() else settings.cwd / p
    local = settings.cwd / "migrations"
    if local.is_dir():
        return local
    return PACKAGED


def duration_ms(value: str, what: str) -> int:
    """``5s``, ``500ms``, ``2min``, ``1h``; a bare number is seconds; 0 means no limit."""
    m = _DURATION.match(str(value))
    if not m:
        raise ConfigError(f"{what} must be a duration like 5s, 500ms or 2min (got {value!r})")
    return round(float(m.group(1)) * _UNIT_MS[m.group(2) or "s"])


def timeouts(settings: Settings) -> Timeouts:
    return Timeouts(lock_ms=duration_ms(settings.lock_timeout, "DBKIT_LOCK_TIMEOUT/--lock-timeout"),
                    statement_ms=duration_ms(settings.statement_timeout,
                                             "DBKIT_STATEMENT_TIMEOUT/--statement-timeout"))


def _target(settings: Settings, url: DbURL | None, dbname: str | None) -> DbURL:
    target = url or settings.migration_url()
    return target.with_(dbname=dbname) if dbname else target


@contextmanager
def _db_errors(target: DbURL) -> Iterator[None]:
    """Driver errors outside a migration's own statements, as named errors."""
    import psycopg

    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermissionDenied(f"permission denied in {target.dbname}: {exc.diag.message_primary}",
                               hint="run migrations as the database owner (the role in "
                               "DATABASE_URL from dbkit create)") from None
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConnectError(f"lost the connection to {target}: {first}") from None


@contextmanager
def _reader(target: DbURL, settings: Settings) -> Iterator[psycopg.Connection]:
    """A read-only look: no lock, nothing created."""
    with _db_errors(target):
        conn = connect(with_app(target, "dbkit status"), settings, autocommit=True)
        conn.prepare_threshold = None
        try:
            yield conn
        finally:
            conn.close()


@contextmanager
def _locked(target: DbURL, settings: Settings, limits: Timeouts) -> Iterator[Runner]:
    """The migration lock, then the migration connection (in that order: a migration session
    without the lock behind it is an orphan, see Runner._end_orphans)."""
    with _db_errors(target), MigrationLock(target, settings, limits.lock_ms), \
            connect(with_app(target, MIGRATE_APP), settings, autocommit=True) as conn:
        conn.prepare_threshold = None  # PgBouncer transaction mode has no prepared statements
        yield Runner(conn, settings, limits, target)


# -- results -----------------------------------------------------------------------------
@dataclass
class Planned:
    id: str
    transactional: bool
    sql: list[str]


@dataclass
class _Run:
    database: str  # masked URL
    directory: str
    dry_run: bool = False
    plan: list[Planned] = field(default_factory=list)  # --dry-run: what would run
    warnings: list[str] = field(default_factory=list)

    def _base(self) -> dict[str, Any]:
        return {"database": self.database, "directory": self.directory, "dry_run": self.dry_run,
                "plan": [p.__dict__ for p in self.plan], "warnings": self.warnings}


@dataclass
class MigrateResult(_Run):
    applied: list[Ran] = field(default_factory=list)
    already_applied: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**self._base(), "applied": [r.as_dict() for r in self.applied],
                "already_applied": self.already_applied}


@dataclass
class RollbackResult(_Run):
    rolled_back: list[Ran] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**self._base(), "rolled_back": [r.as_dict() for r in self.rolled_back]}


@dataclass
class AppliedMigration:
    id: str
    applied_at: str | None  # ISO 8601, UTC
    file: str | None  # None when the file is gone


@dataclass
class StatusReport:
    database: str
    directory: str
    applied: list[AppliedMigration]
    pending: list[str]
    drift: list[Drift]
    unverified: list[str]  # applied outside dbkit: no checksum recorded yet

    @property
    def up_to_date(self) -> bool:
        return not self.pending

    def as_dict(self) -> dict[str, Any]:
        return {"database": self.database, "directory": self.directory,
                "up_to_date": self.up_to_date, "applied": [a.__dict__ for a in self.applied],
                "pending": self.pending, "drift": [d.as_dict() for d in self.drift],
                "unverified": self.unverified}


@dataclass
class NewResult:
    id: str
    path: str
    rollback_path: str
    created: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- read-only ---------------------------------------------------------------------------
def _pending(files: list[MigrationFile], state: State, to: str | None = None) -> list[MigrationFile]:
    applied = state.applied_hashes
    pending = [f for f in files if f.hash not in applied]
    if to is not None:
        ids = [f.id for f in files]
        stop = ids.index(to)
        pending = [f for f in pending if ids.index(f.id) <= stop]
    return pending


def _load(settings: Settings, url: DbURL | None, dbname: str | None
          ) -> tuple[Path, list[MigrationFile], DbURL, State]:
    directory = migrations_dir(settings)
    files = discover(directory)
    target = _target(settings, url, dbname)
    with _reader(target, settings) as conn:
        state = read_state(conn)
    return directory, files, target, state


def pending_ids(settings: Settings, *, url: DbURL | None = None, dbname: str | None = None
                ) -> list[str]:
    """Ids of migrations not yet applied, in the order they would run (read-only, no lock).

    Raises ConnectError when the database cannot be reached, ConfigError for a bad directory.
    """
    _dir, files, _target_url, state = _load(settings, url, dbname)
    return [f.id for f in _pending(files, state)]


def ensure_up_to_date(settings: Settings, *, url: DbURL | None = None,
                      dbname: str | None = None) -> None:
    """Raise SchemaNotReady naming the pending migrations, if any."""
    pending = pending_ids(settings, url=url, dbname=dbname)
    if pending:
        shown = ", ".join(pending[:3]) + (f" and {len(pending) - 3} more" if len(pending) > 3 else "")
        raise SchemaNotReady(f"{len(pending)} migration(s) pending: {shown}")


def status(settings: Settings, *, url: DbURL | None = None, dbname: str | None = None
           ) -> StatusReport:
    """Every migration, applied (with when) or pending, and drift of applied ones."""
    directory, files, target, state = _load(settings, url, dbname)
    drift, unverified = find(files, state)
    by_id = {f.id: f for f in files}
    order = {f.id: i for i, f in enumerate(files)}
    applied = sorted(state.applied, key=lambda a: (order.get(a.id, len(order)), str(a.applied_at)))
    return StatusReport(
        database=str(target), directory=str(directory),
        applied=[AppliedMigration(a.id, a.applied_at.isoformat() + "Z" if a.applied_at else None,
                                  str(by_id[a.id].path) if a.id in by_id else None)
                 for a in applied],
        pending=[f.id for f in _pending(files, state)], drift=drift, unverified=unverified)


def verify(settings: Settings, *, url: DbURL | None = None, dbname: str | None = None
           ) -> StatusReport:
    """Fail with DriftDetected, naming the files, when an applied migration was edited,
    renamed or deleted since it was applied."""
    report = status(settings, url=url, dbname=dbname)
    if report.drift:
        raise DriftDetected("; ".join(d.detail for d in report.drift))
    return report


# -- changes -----------------------------------------------------------------------------
def _prologue(settings: Settings, to: str | None, url: DbURL | None, dbname: str | None
              ) -> tuple[Path, list[MigrationFile], DbURL, Timeouts]:
    """What migrate and rollback both start from: the files, the target and the timeouts."""
    directory = migrations_dir(settings)
    files = discover(directory)
    if to is not None and to not in {f.id for f in files}:
        raise ConfigError(f"--to {to}: no migration with that id in {directory}",
                          hint="dbkit status lists the ids (file names without .sql)")
    return directory, files, _target(settings, url, dbname), timeouts(settings)


def migrate(settings: Settings, *, to: str | None = None, dry_run: bool = False,
            allow_unsafe: bool = False, url: DbURL | None = None, dbname: str | None = None,
            mark: bool = False) -> MigrateResult:
    """Apply pending migrations in order (up to and including ``to``), each in its own
    transaction with its bookkeeping, one process at a time per database.

    Pending migrations are linted first (``dbkit.lint``): findings refuse the run with
    LintFindings unless ``allow_unsafe`` or DBKIT_ENV=development, where they are warnings.
    ``mark`` records them as applied without running them (adopting a database that already
    has that schema, like ``yoyo mark`` or ``alembic stamp``); it needs ``to``.
    """
    if mark and to is None:
        raise ConfigError("--mark-applied needs --to ID: the last migration the database "
                          "already has", hint="see dbkit status for the ids")
    directory, files, target, limits = _prologue(settings, to, url, dbname)
    result = MigrateResult(database=str(target), directory=str(directory), dry_run=dry_run)
    if dry_run:
        with _reader(target, settings) as conn:
            state = read_state(conn)
        result.warnings = _warnings(files, state, refuse_renames=False)
        pending = _pending(files, state, to)
        if not mark:  # marking runs nothing: nothing to lint
            result.warnings += lint_gate(pending, allow_unsafe, settings.env, preview=True)
        result.plan = [Planned(f.id, f.transactional,
                               [] if mark else [s.sql for s in statements(f.path)])
                       for f in pending]
        result.already_applied = len(state.applied)
        return result
    with _locked(target, settings, limits) as runner:
        state = runner.prepare(files)
        drifted = _warnings(files, state, refuse_renames=True)
        pending = _pending(files, state, to)  # computed under the lock
        unsafe = [] if mark else lint_gate(pending, allow_unsafe, settings.env)
        result.already_applied = len(state.applied)
        for f in pending:
            result.applied.append(runner.mark(f) if mark else runner.run(f, "apply"))
        result.warnings = runner.notes + drifted + unsafe
    return result


def _warnings(files: list[MigrationFile], state: State, refuse_renames: bool) -> list[str]:
    drift, unverified = find(files, state)
    renamed = [d for d in drift if d.kind == "renamed"]
    if renamed and refuse_renames:
        raise DriftDetected("; ".join(d.detail for d in renamed) + "; nothing was applied",
                            hint="restore the original file name (or record the rename with "
                            "yoyo unmark/mark)")
    out = [d.detail for d in drift]
    if unverified and not refuse_renames:
        out.append(f"{len(unverified)} applied migration(s) have no recorded checksum yet "
                   "(applied outside dbkit): " + ", ".join(unverified))
    return out


def rollback(settings: Settings, *, steps: int = 1, to: str | None = None, all: bool = False,
             dry_run: bool = False, url: DbURL | None = None, dbname: str | None = None
             ) -> RollbackResult:
    """Roll back the last ``steps`` applied migrations, or every one after ``to`` (which stays
    applied), or ``all`` of them; newest first, each with its ``.rollback.sql``."""
    if to is not None and all:
        raise ConfigError("give only one of --to and --all")
    if steps < 1:
        raise ConfigError("--steps must be at least 1")
    directory, files, target, limits = _prologue(settings, to, url, dbname)
    result = RollbackResult(database=str(target), directory=str(directory), dry_run=dry_run)
    if dry_run:
        with _reader(target, settings) as conn:
            state = read_state(conn)
        result.warnings = _warnings(files, state, refuse_renames=False)
        result.plan = [Planned(f.id, f.transactional, [s.sql for s in statements(_rb(f))])
                       for f in _rollback_targets(files, state, steps, to, all)]
        return result
    with _locked(target, settings, limits) as runner:
        state = runner.prepare(files)
        drifted = _warnings(files, state, refuse_renames=False)
        for f in _rollback_targets(files, state, steps, to, all):
            result.rolled_back.append(runner.run(f, "rollback"))
        result.warnings = runner.notes + drifted
    return result


def _rb(f: MigrationFile) -> Path:
    assert f.rollback_path is not None
    return f.rollback_path


def _rollback_targets(files: list[MigrationFile], state: State, steps: int, to: str | None,
                      all: bool) -> list[MigrationFile]:
    applied = state.applied_hashes
    done = [f for f in files if f.hash in applied]  # file order
    known = {f.id for f in files}
    if all:
        gone = [a.id for a in state.applied if a.id not in known]
        if gone:
            raise DriftDetected(f"cannot roll back {', '.join(gone)}: the file is gone; nothing "
                                "was rolled back", hint="restore the file from version control")
        targets = done
    elif to is not None:
        ids = [f.id for f in done]
        if to not in ids:
            raise ConfigError(f"--to {to}: that migration is not applied")
        targets = done[ids.index(to) + 1:]
    else:
        targets = done[-steps:] if done else []
    targets = list(reversed(targets))
    missing = [f.id for f in targets if f.rollback_path is None]
    if missing:
        raise MigrationError(f"no rollback file for {', '.join(missing)}; nothing was rolled back",
                             hint=f"write {missing[0]}.rollback.sql next to the migration")
    return targets


def new_migration(settings: Settings, name: str) -> NewResult:
    """Write the next-numbered migration and its rollback file.

    Into ``--migrations``/DBKIT_MIGRATIONS when given, else ``./migrations`` (created when
    missing) — never into the installed package.
    """
    directory = migrations_dir(settings)
    if directory == PACKAGED and not settings.migrations:
        directory = settings.cwd / "migrations"
    path, rb, created = _new_files(directory, name)
    return NewResult(id=path.stem, path=str(path), rollback_path=str(rb), created=created)
