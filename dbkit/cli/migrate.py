"""dbkit migrate / rollback / status / verify / new / history / dump."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dbkit.cli import fleet
from dbkit.cli.common import cli, emit, migrations_option, settings
from dbkit.timestamps import iso

if TYPE_CHECKING:
    from dbkit.migrate.commands import MigrateResult, RollbackResult

def _timeout_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--statement-timeout", default=None, metavar="DURATION",
                     help="statement_timeout for migration statements (DBKIT_STATEMENT_TIMEOUT; "
                     "0 = none).")(f)
    return click.option("--lock-timeout", default=None, metavar="DURATION",
                        help="Give up after waiting this long for the migration lock or a table "
                        "lock, e.g. 5s, 500ms, 2min (DBKIT_LOCK_TIMEOUT; 0 = wait forever).")(f)


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        click.echo(f"dbkit: warning: {w}", err=True)


def _render_plan(result: MigrateResult | RollbackResult, verb: str,
                 empty: str = "-- (no statements)") -> str:
    lines = [f"-- dry run: nothing changed. Would {verb} {len(result.plan)} migration(s) on "
             f"{result.database}:"]
    for p in result.plan:
        how = "one transaction" if p.transactional else "no transaction (transactional: false)"
        lines.append(f"\n-- {p.id} ({how})")
        lines += [s.rstrip().rstrip(";") + ";" for s in p.sql] or [empty]
    return "\n".join(lines)


@cli.command()
@click.option("--to", "to", default=None, metavar="ID", help="Stop after this migration.")
@click.option("--dry-run", is_flag=True, help="Print the SQL that would run; change nothing.")
@click.option("--mark-applied", is_flag=True,
              help="Record the pending migrations up to --to as applied without running them: "
              "for a database that already has that schema (like yoyo mark, alembic stamp).")
@click.option("--allow-unsafe", is_flag=True,
              help="Apply even if dbkit lint finds statements unsafe on a live database "
              "(findings are only warnings when DBKIT_ENV=development).")
@_timeout_options
@migrations_option
@click.option("--wait-replicas", "wait_replicas", is_flag=False, flag_value="30s", default=None,
              metavar="[DURATION]",
              help="Then wait (default 30s) until every streaming replica has replayed the "
              "last commit; exit 4 naming the ones behind (needs pg_read_all_stats).")
@fleet.fleet_options(canary=True)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def migrate(to: str | None, dry_run: bool, mark_applied: bool, allow_unsafe: bool,
            lock_timeout: str | None, statement_timeout: str | None, migrations: str | None,
            wait_replicas: str | None, targets: Path | None, parallel: int | None,
            per_server: int | None, canary: int, fail_fast: bool, as_json: bool) -> None:
    """Apply pending migrations, as the role in DBKIT_MIGRATE_URL / DATABASE_URL.

    With --targets FILE, on every database listed: exit 8 if any migration failed, 4 if a
    target was unreachable."""
    from dbkit.migrate import commands as m
    from dbkit.settings import parse_duration

    s = settings(lock_timeout=lock_timeout, statement_timeout=statement_timeout,
                 migrations=migrations)
    wait_ms = None if wait_replicas is None else parse_duration(wait_replicas, "--wait-replicas")
    if targets is not None:
        from dbkit.errors import ConfigError
        from dbkit.fleet import migrate_all

        if dry_run or mark_applied:
            raise ConfigError("--dry-run and --mark-applied act on one database",
                              hint="run them without --targets, on one database at a time")
        fleet.finish(migrate_all(fleet.load(s, targets), s,
                                 fleet.options(parallel, per_server, canary, fail_fast),
                                 to=to, allow_unsafe=allow_unsafe, wait_replicas_ms=wait_ms,
                                 on_done=fleet.progress(as_json)), as_json)
        return
    result = m.migrate(s.target(), to=to, dry_run=dry_run, allow_unsafe=allow_unsafe, mark=mark_applied,
                       wait_replicas_ms=wait_ms)
    _warn(result.warnings)
    if dry_run:
        plan = (_render_plan(result, "mark as applied", "-- (recorded only; not run)")
                if mark_applied else _render_plan(result, "apply"))
        emit(result.as_dict(), as_json, plan)
        return
    lines = [f"marked {r.id} as applied (not run)" if r.direction == "mark" else
             f"applied {r.id} ({r.duration_ms:.0f} ms)" for r in result.applied]
    if result.applied:
        lines.append(f"{len(result.applied)} migration(s) "
                     f"{'marked as applied in' if mark_applied else 'applied to'} {result.database}")
    else:
        lines.append(f"up to date: nothing to apply ({result.already_applied} applied)")
    if result.replicas and result.replicas.replicas:
        wait = result.replicas
        lines.append(f"{len(wait.replicas)} replica(s) replayed up to {wait.lsn} in "
                     f"{wait.waited_s:.2f}s: " + ", ".join(r.label() for r in wait.replicas))
    emit(result.as_dict(), as_json, "\n".join(lines))


@cli.command()
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Roll back this many migrations (default 1).")
@click.option("--to", "to", default=None, metavar="ID",
              help="Roll back every migration after ID (ID stays applied).")
@click.option("--all", "all_", is_flag=True, help="Roll back every applied migration.")
@click.option("--dry-run", is_flag=True, help="Print the SQL that would run; change nothing.")
@click.option("--yes", is_flag=True, help="Confirm (needed when DBKIT_ENV=production).")
@click.option("--allow-production", is_flag=True,
              help="Do it even though DBKIT_ENV=production (refused there otherwise).")
@_timeout_options
@migrations_option
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def rollback(steps: int | None, to: str | None, all_: bool, dry_run: bool, yes: bool,
             allow_production: bool, lock_timeout: str | None, statement_timeout: str | None,
             migrations: str | None, as_json: bool) -> None:
    """Roll back applied migrations, newest first, with their .rollback.sql files.

    When DBKIT_ENV=production: refused without --yes, and --all (which drops every table) also
    needs --allow-production. --dry-run is always allowed."""
    from dbkit.errors import ConfigError
    from dbkit.migrate import commands as m

    if steps is not None and (to is not None or all_):
        raise ConfigError("--steps cannot be combined with --to or --all")
    s = settings(lock_timeout=lock_timeout, statement_timeout=statement_timeout,
                 migrations=migrations)
    result = m.rollback(s.target(), steps=steps or 1, to=to, all=all_, dry_run=dry_run,
                        confirmed=yes, allow_production=allow_production)
    _warn(result.warnings)
    if dry_run:
        emit(result.as_dict(), as_json, _render_plan(result, "roll back"))
        return
    lines = [f"rolled back {r.id} ({r.duration_ms:.0f} ms)" for r in result.rolled_back]
    lines.append(f"{len(result.rolled_back)} migration(s) rolled back on {result.database}"
                 if result.rolled_back else "nothing to roll back")
    emit(result.as_dict(), as_json, "\n".join(lines))


@cli.command()
@click.option("--check", is_flag=True,
              help="Exit 10 when any migration is pending (a deploy gate).")
@migrations_option
@click.option("--yoyo", "yoyo_command", is_flag=True,
              help="Print the yoyo list command line that shows the same (password masked).")
@fleet.fleet_options()
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def status(check: bool, migrations: str | None, yoyo_command: bool, targets: Path | None,
           parallel: int | None, per_server: int | None, fail_fast: bool,
           as_json: bool) -> None:
    """Every migration, applied (with when) or pending; warns about edited applied files."""
    from dbkit.errors import PendingMigrations
    from dbkit.migrate import commands as m

    s = settings(migrations=migrations)
    if yoyo_command:
        line = m.yoyo_list_command(s.target())
        emit({"command": line}, as_json, line)
        return
    if targets is not None:
        from dbkit.fleet import status_all

        fleet.finish(status_all(fleet.load(s, targets), s,
                                fleet.options(parallel, per_server, fail_fast=fail_fast),
                                check=check, on_done=fleet.progress(as_json)), as_json)
        return
    report = m.status(s.target())
    _warn([d.detail for d in report.drift])
    lines = [f"applied  {a.id:<40} {iso(a.applied_at, fraction=False) or '?'}"
             + ("" if a.file else "  (file gone)")
             for a in report.applied]
    lines += [f"pending  {p}" for p in report.pending]
    lines.append(f"{len(report.applied)} applied, {len(report.pending)} pending"
                 f" ({report.directory} on {report.database})")
    emit(report.as_dict(), as_json, "\n".join(lines))
    if check and report.pending:
        raise PendingMigrations(f"{len(report.pending)} migration(s) pending: "
                                + ", ".join(report.pending[:5])
                                + (" …" if len(report.pending) > 5 else ""))


@cli.command()
@migrations_option
@click.option("--accept", "accept", multiple=True, metavar="ID",
              help="Record this applied migration's edited file as its version (repeatable).")
@fleet.fleet_options()
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
def verify(migrations: str | None, accept: tuple[str, ...], targets: Path | None,
           parallel: int | None, per_server: int | None, fail_fast: bool,
           as_json: bool) -> None:
    """Fail (exit 11) when an applied migration's file was edited, renamed or deleted.

    --accept ID records an applied migration's edited file as its version (Flyway's repair),
    for a deliberate, harmless edit; nothing runs, and history records it."""
    from dbkit.errors import ConfigError, DriftDetected
    from dbkit.migrate import commands as m

    s = settings(migrations=migrations)
    if targets is not None:
        from dbkit.fleet import verify_all

        if accept:
            raise ConfigError("--accept records one database's files",
                              hint="run verify --accept without --targets")
        fleet.finish(verify_all(fleet.load(s, targets), s,
                                fleet.options(parallel, per_server, fail_fast=fail_fast),
                                on_done=fleet.progress(as_json)), as_json)
        return
    target = s.target()
    if accept:
        for mid in m.accept(target, list(accept)):
            click.echo(f"accepted {mid}: its file as it is now is the recorded version", err=True)
    report = m.status(target)
    if report.drift:
        if as_json:  # the report on stdout for tools, the one-line error on stderr
            emit(report.as_dict(), True)
        raise DriftDetected("; ".join(d.detail for d in report.drift))
    note = (f"; {len(report.unverified)} applied outside dbkit, no checksum yet: "
            + ", ".join(report.unverified)) if report.unverified else ""
    emit(report.as_dict(), as_json,
         f"ok: {len(report.applied)} applied migration(s) match their files{note}")


@cli.command()
@click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the SQL to this file (default: standard output).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def dump(file: Path | None, as_json: bool) -> None:
    """The schema as SQL, for review and diffs: pg_dump --schema-only as the DATABASE_URL role,
    without dbkit's and yoyo's bookkeeping tables, then the applied migrations' ids as SQL
    comments (for review: loading the file does not record them)."""
    from dbkit.migrate import commands as m

    result = m.dump(settings().target(), file)
    text = (f"wrote {result.file} ({len(result.applied)} applied migration(s))" if result.file
            else result.sql.rstrip("\n"))
    emit(result.as_dict(), as_json, text)


@cli.command("new")
@click.argument("name")
@migrations_option
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def new(name: str, migrations: str | None, as_json: bool) -> None:
    """Write the next-numbered migration NNNN_NAME.sql and its .rollback.sql."""
    from dbkit.migrate import commands as m

    r = m.new_migration(settings(migrations=migrations), name)
    text = (f"created {r.path}\ncreated {r.rollback_path}" if r.created
            else f"exists  {r.path} (not overwritten)")
    emit(r.as_dict(), as_json, text)


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show the last N only.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable list.")
def history(limit: int | None, as_json: bool) -> None:
    """Every apply, rollback, mark and accept dbkit ran: who, where, when, how long, outcome."""
    from dbkit.migrate import commands as m

    entries = m.history(settings().target(), limit=limit)
    lines = [f"{iso(e.started_at, fraction=False)}  {e.direction:<8} {e.migration:<36} "
             f"{e.outcome:<11} {_ms(e.duration_ms):>9}  {e.db_user} ({e.os_user}@{e.hostname},"
             f" dbkit {e.dbkit_version})" + (f"  {e.error}" if e.error else "")
             for e in entries]
    emit([e.as_dict() for e in entries], as_json, "\n".join(lines) or "no migrations recorded yet")


def _ms(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.0f} ms"
