"""dbkit create / drop: the role and database named in DATABASE_URL."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from dbkit.cli.common import cli, confirm, emit, settings

if TYPE_CHECKING:
    from dbkit.provision import Result


@cli.command()
@click.option("--app-role", default=None, help="Also create a DML-only role for the application "
              "(DBKIT_APP_ROLE).")
@click.option("--connection-limit", type=click.IntRange(min=-1), default=None,
              help="CONNECTION LIMIT for the owner role.")
@click.option("--password-stdin", is_flag=True, help="Read the owner role's password from stdin.")
@click.option("--rotate-password", is_flag=True,
              help="Give the existing role(s) a fresh password (from stdin with --password-stdin),"
              " written to .env; the old one stops working, open sessions stay.")
@click.option("--print-url", is_flag=True,
              help="Print the full DATABASE_URL (with a generated password) instead of writing .env.")
@click.option("--local", is_flag=True, help="Use dbkit's own local PostgreSQL as the admin server.")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=None,
              help="Retry for up to SECONDS until the server accepts connections.")
@click.option("--dry-run", is_flag=True, help="Print the SQL plan (passwords masked); change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def create(app_role: str | None, connection_limit: int | None, password_stdin: bool,
           rotate_password: bool, print_url: bool, local: bool, wait_s: float | None,
           dry_run: bool, as_json: bool) -> None:
    """Create the role and database named in DATABASE_URL (idempotent)."""
    from dbkit import admin, provision
    from dbkit.db import wait_ready

    s = settings(app_role=app_role, local=local)
    target = s.target()
    password = _read_password() if password_stdin else None
    server = admin.resolve(s)
    if wait_s:
        wait_ready(server, s, round(wait_s * 1000))
    result = provision.create(target, server, dry_run=dry_run, password=password,
                              rotate=rotate_password, connection_limit=connection_limit,
                              print_url=print_url)
    emit(result.as_dict(), as_json, _render(result))


@cli.command()
@click.option("--force", is_flag=True, help="Terminate open connections to the database.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--app-role", default=None, help="Also drop this app role (DBKIT_APP_ROLE).")
@click.option("--local", is_flag=True, help="Use dbkit's own local PostgreSQL as the admin server.")
@click.option("--dry-run", is_flag=True, help="Print what would be dropped; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def drop(force: bool, yes: bool, app_role: str | None, local: bool, dry_run: bool,
         as_json: bool) -> None:
    """Drop the database and role(s) named in DATABASE_URL (the inverse of create)."""
    from dbkit import admin, provision

    s = settings(app_role=app_role, local=local)
    target = s.target()
    if not dry_run:
        roles = " and ".join(repr(r) for r in (target.role, s.app_role) if r)
        confirm(f"Drop database {target.dbname!r} and role(s) {roles}?", yes)
    result = provision.drop(target, admin.resolve(s), force=force, dry_run=dry_run)
    emit(result.as_dict(), as_json, _render(result, verb="dropped"))


def _read_password() -> str:
    from dbkit.errors import ConfigError

    line = sys.stdin.readline().rstrip("\r\n")
    if not line.strip():
        raise ConfigError("--password-stdin was given but standard input holds no password "
                          "(empty or blank)", hint="pipe the password in: printf %s \"$PW\" | "
                          "dbkit create --password-stdin")
    return line


def _render(result: Result, verb: str = "created") -> str:
    lines: list[str] = []
    if result.dry_run:
        lines.append("-- dry run: nothing changed. Plan:")
        lines += [f"{stmt};" for stmt in result.statements] or ["-- nothing to do"]
        return "\n".join(lines)
    for item in result.created:
        lines.append(f"{verb} {item}")
    if verb == "dropped":
        lines += [f"dropped {item}" for item in result.existed]
        lines += [f"kept    role {r} (dbkit did not create it for this database)"
                  for r in result.kept]
        return "\n".join(lines) or "nothing to drop"
    for item in result.existed:
        lines.append(f"exists  {item}")
    if result.created or result.statements:
        lines.append(f"applied {len(result.statements)} statement(s)")
    else:
        lines.append("nothing to do: already up to date")
    lines += [f"new password for role {r}: the old one no longer works" for r in result.rotated]
    lines.append(f"DATABASE_URL={result.url}")
    if result.app_url:
        lines.append(f"DBKIT_APP_URL={result.app_url}")
    if result.env_file:
        lines.append(f"written to {result.env_file}")
    if result.printed_url:
        lines.append(result.printed_url)
    return "\n".join(lines)
