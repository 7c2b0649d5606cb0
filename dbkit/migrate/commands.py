"""The migration commands over yoyo's bookkeeping, as Alembic's ``command.py``: migrate,
rollback, status, verify and accept, new, history and dump.

Library API (the CLI in ``dbkit.cli.migrate`` is a skin over it); every function that touches a
database takes the ``Target`` it acts on (``settings.target()``, or ``Target.of(url, settings)``
for another database, e.g. a test template). Migrations reach it by ``target.migrate_url``::

    pending_ids(target) -> list[str]                        read-only, no lock
    ensure_up_to_date(target)                               raises SchemaNotReady
    status(target) -> StatusReport                          applied (with when), pending, drift
    verify(target) -> StatusReport                          raises DriftDetected
    accept(target, ids) -> list[str]                        records edited files (Flyway repair)
    migrate(target, *, to=None, dry_run=False, allow_unsafe=False, mark=False,
            wait_replicas_ms=None) -> MigrateResult
    rollback(target, *, steps=1, to=None, all=False, dry_run=False) -> RollbackResult
    new_migration(settings, name) -> NewResult
    history(target, *, limit=None) -> list[Entry]
    dump(target, file=None) -> DumpResult

See docs/migrations.md for the guarantees (locking, crash safety, timeouts).
"""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbkit.db import connect, translate
from dbkit.errors import (
    ConfigError,
    DriftDetected,
    MigrationError,
    PermissionDenied,
    SchemaNotReady,
    ServerError,
)
from dbkit.migrate.bookkeeping import (
    ALL_TABLES,
    Entry,
    State,
    read_history,
    read_state,
    settled,
)
from dbkit.migrate.drift import Drift, find
from dbkit.migrate.files import (
    MigrationFile,
    discover,
    migrations_dir,
    packaged_dir,
    statements,
)
from dbkit.migrate.files import new_migration as _new_files
from dbkit.replicas import ReplicaWait, in_recovery, refuse_standby, wait_for_replicas
from dbkit.timestamps import iso
from dbkit.urls import with_app

# The lock, the runner and the linter (pglast) are imported only on the paths that change
# something or lint: a no-op deploy gate (status --check, migrate with nothing to do) pays
# for none of them (tests/test_imports.py).
if TYPE_CHECKING:
    import psycopg

    from dbkit.migrate.runner import Ran, Runner, Timeouts
    from dbkit.settings import Settings, Target
    from dbkit.urls import DbURL


def _timeouts(settings: Settings) -> Timeouts:
    from dbkit.migrate.runner import Timeouts

    return Timeouts(lock_ms=settings.lock_timeout_ms, statement_ms=settings.statement_timeout_ms)


@contextmanager
def _db_errors(url: DbURL) -> Iterator[None]:
    """Driver errors outside a migration's own statements (those name their file and line)."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, f"migrations of {url.dbname}", hints={
            PermissionDenied: "run migrations as the database owner (the role in DATABASE_URL "
            "from dbkit create)"}) from None


# A no-op migrate's look is not named "dbkit migrate": a locked run ends busy sessions of that
# name as orphans of killed runs (Runner._end_orphans).
CHECK_APP = "dbkit migrate (check)"


@contextmanager
def _reader(url: DbURL, settings: Settings, app: str = "dbkit status"
            ) -> Iterator[psycopg.Connection[Any]]:
    """A read-only look: no lock, nothing created."""
    with _db_errors(url):
        conn = connect(with_app(url, app), settings, autocommit=True)
        conn.prepare_threshold = None
        try:
            yield conn
        finally:
            conn.close()


@contextmanager
def _locked(url: DbURL, settings: Settings, limits: Timeouts) -> Iterator[Runner]:
    """The migration lock, then the migration connection (in that order: a migration session
    without the lock behind it is an orphan, see Runner._end_orphans)."""
    from dbkit.migrate.lock import MIGRATE_APP, MigrationLock
    from dbkit.migrate.runner import Runner

    with _db_errors(url), MigrationLock(url, settings, limits.lock_ms), \
            connect(with_app(url, MIGRATE_APP), settings, autocommit=True) as conn:
        conn.prepare_threshold = None  # PgBouncer transaction mode has no prepared statements
        yield Runner(conn, settings, limits, url)


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
    replicas: ReplicaWait | None = None  # --wait-replicas: what the wait saw

    def as_dict(self) -> dict[str, Any]:
        return {**self._base(), "applied": [r.as_dict() for r in self.applied],
                "already_applied": self.already_applied,
                "replicas": self.replicas.as_dict() if self.replicas else None}


@dataclass
class RollbackResult(_Run):
    rolled_back: list[Ran] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**self._base(), "rolled_back": [r.as_dict() for r in self.rolled_back]}


@dataclass
class AppliedMigration:
    id: str
    applied_at: dt.datetime | None  # UTC
    file: str | None  # None when the file is gone

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "applied_at": iso(self.applied_at), "file": self.file}


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
                "up_to_date": self.up_to_date, "applied": [a.as_dict() for a in self.applied],
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


def _load(target: Target) -> tuple[Path, list[MigrationFile], State]:
    directory = migrations_dir(target.settings)
    files = discover(directory)
    with _reader(target.migrate_url, target.settings) as conn:
        state = read_state(conn)
    return directory, files, state


def pending_ids(target: Target) -> list[str]:
    """Ids of migrations not yet applied, in the order they would run (read-only, no lock).

    Raises ConnectError when the database cannot be reached, ConfigError for a bad directory.
    """
    _dir, files, state = _load(target)
    return [f.id for f in _pending(files, state)]


def ensure_up_to_date(target: Target) -> None:
    """Raise SchemaNotReady naming the pending migrations, if any."""
    pending = pending_ids(target)
    if pending:
        shown = ", ".join(pending[:3]) + (f" and {len(pending) - 3} more" if len(pending) > 3 else "")
        raise SchemaNotReady(f"{len(pending)} migration(s) pending: {shown}")


def status(target: Target) -> StatusReport:
    """Every migration, applied (with when) or pending, and drift of applied ones."""
    directory, files, state = _load(target)
    drift, unverified = find(files, state)
    by_id = {f.id: f for f in files}
    order = {f.id: i for i, f in enumerate(files)}
    applied = sorted(state.applied, key=lambda a: (order.get(a.id, len(order)), str(a.applied_at)))
    return StatusReport(
        database=str(target.migrate_url), directory=str(directory),
        applied=[AppliedMigration(a.id, a.applied_at,
                                  str(by_id[a.id].path) if a.id in by_id else None)
                 for a in applied],
        pending=[f.id for f in _pending(files, state)], drift=drift, unverified=unverified)


def yoyo_list_command(target: Target) -> str:
    """The ``yoyo list`` command line that shows this database's migrations as yoyo sees them
    (yoyo needs the ``postgresql+psycopg`` scheme and the directory), password masked: the
    user puts it back in (or leaves it out and lets ~/.pgpass supply it)."""
    import shlex

    url = target.migrate_url
    if url.host and url.host.startswith("/") or url.more_hosts:
        # yoyo reads a socket directory only as ?host=, and no host list at all
        raise ConfigError("yoyo cannot take this URL (a socket directory or several hosts)",
                          hint="use a postgresql://role@host:port/database URL for yoyo")
    database = url.render(scheme="postgresql+psycopg")
    return shlex.join(["yoyo", "list", "--batch", "--database", database,
                       str(migrations_dir(target.settings))])


def verify(target: Target) -> StatusReport:
    """Fail with DriftDetected, naming the files, when an applied migration was edited,
    renamed or deleted since it was applied."""
    report = status(target)
    if report.drift:
        raise DriftDetected("; ".join(d.detail for d in report.drift))
    return report


# -- changes -----------------------------------------------------------------------------
def _prologue(target: Target, to: str | None) -> tuple[Path, list[MigrationFile]]:
    """What migrate, rollback and accept start from: the files, and ``to`` checked."""
    directory = migrations_dir(target.settings)
    files = discover(directory)
    if to is not None and to not in {f.id for f in files}:
        raise ConfigError(f"--to {to}: no migration with that id in {directory}",
                          hint="dbkit status lists the ids (file names without .sql)")
    return directory, files


def migrate(target: Target, *, to: str | None = None, dry_run: bool = False,
            allow_unsafe: bool = False, mark: bool = False,
            wait_replicas_ms: int | None = None) -> MigrateResult:
    """Apply pending migrations in order (up to and including ``to``), each in its own
    transaction with its bookkeeping, one process at a time per database.

    Pending migrations are linted first (``dbkit.lint.engine``): findings refuse the run with
    LintFindings unless ``allow_unsafe`` or DBKIT_ENV=development, where they are warnings.
    ``mark`` records them as applied without running them (adopting a database that already
    has that schema, like ``yoyo mark`` or ``alembic stamp``); it needs ``to``.

    ``wait_replicas_ms``: afterwards (also when nothing was pending), wait that long at most
    for every streaming replica to replay the last commit (``dbkit.replicas``); ReplicasBehind
    (exit 4) when one has not, with the migrations left applied. A standby is refused before
    anything is attempted (ReadOnlyServer, exit 4).
    """
    if mark and to is None:
        raise ConfigError("--mark-applied needs --to ID: the last migration the database "
                          "already has", hint="see dbkit status for the ids")
    settings, url = target.settings, target.migrate_url
    directory, files = _prologue(target, to)
    result = MigrateResult(database=str(url), directory=str(directory), dry_run=dry_run)
    if dry_run:
        with _reader(url, settings) as conn:
            state = read_state(conn)
            standby = in_recovery(conn)
        result.warnings = _warnings(files, state, refuse_renames=False) + _standby(standby)
        pending = _pending(files, state, to)
        if not mark:  # marking runs nothing: nothing to lint
            result.warnings += _lint(pending, allow_unsafe, settings.env, preview=True)
        result.plan = [Planned(f.id, f.transactional,
                               [] if mark else [s.sql for s in statements(f.path)])
                       for f in pending]
        result.already_applied = len(state.applied)
        return result
    # The deploy gate's common case, nothing to do, costs one connection and one query: the
    # lock is taken only when something will be applied or recorded (pending migrations,
    # bookkeeping to create or upgrade, checksums to record, a run in progress or killed).
    # Drift is judged exactly as below; a rename still refuses the run.
    with _reader(url, settings, CHECK_APP) as conn:
        state = read_state(conn)
        nothing_to_do = settled(files, state) and not _pending(files, state, to)
        if nothing_to_do:  # a standby is refused even then: it would hide a wrong URL forever
            refuse_standby(conn, url, "migrate")
    if nothing_to_do:
        result.warnings = _warnings(files, state, refuse_renames=True)
        result.already_applied = len(state.applied)
    else:
        with _locked(url, settings, _timeouts(settings)) as runner:
            state = runner.prepare(files)
            drifted = _warnings(files, state, refuse_renames=True)
            pending = _pending(files, state, to)  # computed under the lock
            unsafe = [] if mark else _lint(pending, allow_unsafe, settings.env,
                                           conn=runner.conn)
            result.already_applied = len(state.applied)
            for f in pending:
                result.applied.append(runner.mark(f) if mark else runner.run(f, "apply"))
            result.warnings = runner.notes + drifted + unsafe
    if wait_replicas_ms is not None:  # after the lock is let go: waiters need not wait for this
        result.replicas = wait_for_replicas(
            url, settings, wait_replicas_ms, done=f"{len(result.applied)} migration(s) "
            f"{'marked' if mark else 'applied'} on {url.dbname}")
    return result


def _standby(standby: bool) -> list[str]:
    return ["the server is a standby (read-only): the real run would be refused"] if standby \
        else []


def _lint(pending: list[MigrationFile], allow_unsafe: bool, env: str, preview: bool = False,
          conn: psycopg.Connection[Any] | None = None) -> list[str]:
    """The lint gate (``dbkit.lint.engine.gate``) over what is about to run; with nothing
    pending there is nothing to parse, and the parser (pglast) is not even imported. With
    ``conn``, the server says which functions are volatile."""
    if not pending:
        return []
    from dbkit.lint.engine import gate

    return gate(pending, allow_unsafe, env, preview=preview, conn=conn)


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


def rollback(target: Target, *, steps: int = 1, to: str | None = None, all: bool = False,
             dry_run: bool = False, confirmed: bool = False, allow_production: bool = False
             ) -> RollbackResult:
    """Roll back the last ``steps`` applied migrations, or every one after ``to`` (which stays
    applied), or ``all`` of them; newest first, each with its ``.rollback.sql``.

    In production a rollback must be ``confirmed`` (``--yes``), and ``all`` (which drops every
    table) needs ``allow_production`` as well; a dry run is always allowed."""
    if to is not None and all:
        raise ConfigError("give only one of --to and --all")
    if steps < 1:
        raise ConfigError("--steps must be at least 1")
    settings, url = target.settings, target.migrate_url
    if not dry_run:
        if all:
            settings.refuse_in_production("dbkit rollback --all (it drops every table)",
                                          allowed=allow_production)
        settings.refuse_in_production("dbkit rollback without --yes", allowed=confirmed,
                                      override="--yes")
    directory, files = _prologue(target, to)
    result = RollbackResult(database=str(url), directory=str(directory), dry_run=dry_run)
    if dry_run:
        with _reader(url, settings) as conn:
            state = read_state(conn)
            standby = in_recovery(conn)
        result.warnings = _warnings(files, state, refuse_renames=False) + _standby(standby)
        result.plan = [Planned(f.id, f.transactional, [s.sql for s in statements(_rb(f))])
                       for f in _rollback_targets(files, state, steps, to, all)]
        return result
    with _locked(url, settings, _timeouts(settings)) as runner:
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
    if directory == packaged_dir() and settings.migrations is None:
        directory = settings.cwd / "migrations"
    path, rb, created = _new_files(directory, name)
    return NewResult(id=path.stem, path=str(path), rollback_path=str(rb), created=created)


def accept(target: Target, ids: list[str]) -> list[str]:
    """Flyway's ``repair`` for edited files: each named applied migration's file as it is now
    becomes its recorded version (after a deliberate, harmless edit such as a comment), so
    ``verify`` passes again. Under the migration lock; an ``accept`` row goes to history.
    Returns the ids whose recorded checksum changed (none on a second run)."""
    settings = target.settings
    directory, files = _prologue(target, None)
    by_id = {f.id: f for f in files}
    for mid in ids:
        if mid not in by_id:
            raise ConfigError(f"--accept {mid}: no migration file with that id in {directory}",
                              hint="a renamed file cannot be accepted: give it its old name back")
    changed: list[str] = []
    with _locked(target.migrate_url, settings, _timeouts(settings)) as runner:
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


def history(target: Target, *, limit: int | None = None) -> list[Entry]:
    """Every recorded apply/rollback/mark/accept, oldest first (the last ``limit`` when given)."""
    with _reader(target.migrate_url, target.settings) as conn:
        return read_history(conn, limit)


# -- dump ------------------------------------------------------------------------------------
@dataclass
class DumpResult:
    database: str  # masked
    sql: str
    applied: list[str]
    file: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"database": self.database, "file": self.file, "applied": self.applied,
                "sql": self.sql if self.file is None else None}


def dump(target: Target, file: Path | None = None) -> DumpResult:
    """The application's schema as SQL, for review and diffs (dbmate's ``dump``): pg_dump
    --schema-only as the migrations' role, without dbkit's and yoyo's bookkeeping tables,
    followed by the applied migrations' ids as SQL comments: a file that changes exactly when the schema or
    the migration state does. The password reaches pg_dump through PGPASSWORD, never argv."""
    from psycopg.conninfo import make_conninfo

    from dbkit.server import GET_BINARIES, find_pg_bin
    from dbkit.settings import child_environment

    settings, url = target.settings, target.migrate_url
    with _reader(url, settings) as conn:  # a clear error for a wrong URL, before pg_dump
        applied = [a.id for a in read_state(conn).applied]
    pg_dump = find_pg_bin(settings.pg_bin, settings.pg_search) / "pg_dump"
    if not pg_dump.exists():
        raise ServerError(f"no pg_dump next to initdb in {pg_dump.parent}", hint=GET_BINARIES)
    kw = url.connect_kwargs()
    password = kw.pop("password", None)
    env = child_environment(**({"PGPASSWORD": password} if password is not None else {}))
    args = [str(pg_dump), "--schema-only", "--no-owner", "--no-privileges", "--encoding=UTF8",
            "-d", make_conninfo(**kw)]
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
