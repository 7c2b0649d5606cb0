"""dbkit setup / reset: one command to a working database, and a fresh one in its place."""

from __future__ import annotations

import click

from dbkit.cli.common import app_role_option, cli, confirm, emit, migrations_option, settings


@cli.command()
@click.option("--no-seed", is_flag=True, help="Skip the sample data.")
@click.option("--local", is_flag=True, help="Use dbkit's own local PostgreSQL even if another answers.")
@migrations_option
@click.option("--rotate-password", is_flag=True,
              help="Give the existing role(s) a fresh generated password, written to .env; the "
              "old one stops working, open sessions stay.")
@app_role_option
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def setup(no_seed: bool, local: bool, migrations: str | None, rotate_password: bool,
          app_role: str | None, as_json: bool) -> None:
    """Create (if needed), migrate and seed: one command to a working database.

    Idempotent. If migrating or seeding fails, the role and database this run created are
    removed again; existing ones are never dropped."""
    from dbkit import admin
    from dbkit import setup as lib

    s = settings(local=local, migrations=migrations, app_role=app_role)
    result = lib.setup(s, admin.resolve(s), seed=not no_seed, rotate=rotate_password)
    lines = [f"{st['step']:<8} {st['detail']}" for st in result.steps]
    lines.append("ready: " + ("done" if result.changed else "nothing changed, already up to date")
                 + f" ({result.seconds:.2f}s)")
    lines.append(f"DATABASE_URL={result.url}")
    if result.app_url:
        lines.append(f"DBKIT_APP_URL={result.app_url}")
    if result.env_file:
        lines.append(f"written to {result.env_file}")
    emit(result.as_dict(), as_json, "\n".join(lines))


@cli.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--env", "env", type=click.Choice(["development", "test", "production"]),
              default=None, help="Mark the environment (production refuses).")
@click.option("--no-seed", is_flag=True, help="Do not load the sample data after migrating.")
@click.option("--local", is_flag=True, help="Use dbkit's own local PostgreSQL as the admin server.")
@app_role_option
@migrations_option
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def reset(yes: bool, env: str | None, no_seed: bool, local: bool, app_role: str | None,
          migrations: str | None, as_json: bool) -> None:
    """Replace the database with a freshly set-up one (create, migrate, seed).

    All or nothing: the new database is built beside the old one and swapped in by renaming,
    then the old one is dropped (its sessions are ended). If any step fails, the old database
    is left as it was. The role and its password are kept. Refused when DBKIT_ENV=production
    or --env production (either one is enough)."""
    from dbkit import admin
    from dbkit import setup as lib

    s = settings(local=local, app_role=app_role, migrations=migrations)
    lib.refuse_reset_in_production(s, env)  # before asking (reset() itself refuses too)
    name = s.target().dbname if s.database_url else lib.DEFAULT_NAME
    confirm(f"Replace database {name!r} and all its data with a fresh one?", yes)
    result = lib.reset(s, admin.resolve(s), seed=not no_seed, env=env)
    lines = [f"reset {result.url}"] + [f"  {st['step']:<8} {st['detail']}" for st in result.steps]
    emit(result.as_dict(), as_json, "\n".join(lines))
