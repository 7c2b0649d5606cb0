"""dbkit testdb create|drop: isolated test databases cloned from a migrated template."""

from __future__ import annotations

import click

from dbkit.cli.common import cli, emit, migrations_option, settings


@cli.group()
def testdb() -> None:
    """Isolated test databases cloned from a template kept at the latest migrations."""


@testdb.command("create")
@click.option("--count", type=click.IntRange(min=1, max=1000), default=1, show_default=True,
              help="How many databases.")
@click.option("--prefix", default="dbkit_test_", show_default=True,
              help="Databases are named PREFIX1..PREFIXN.")
@click.option("--seed", is_flag=True, help="Clone from a template that also holds the sample data.")
@click.option("--reveal", is_flag=True,
              help="Print URLs with the test role's password (for handing to test runners).")
@click.option("--local", is_flag=True, help="Use dbkit's own local PostgreSQL as the admin server.")
@click.option("--allow-production", is_flag=True,
              help="Do it even though DBKIT_ENV=production (refused there otherwise).")
@migrations_option
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def create(count: int, prefix: str, seed: bool, reveal: bool, local: bool,
           allow_production: bool, migrations: str | None, as_json: bool) -> None:
    """Create COUNT fresh databases at the latest schema (existing ones are replaced).

    The template is rebuilt first when the migration files changed."""
    from dbkit import admin
    from dbkit.testdb import commands as lib

    s = settings(local=local, migrations=migrations)
    s.refuse_in_production("dbkit testdb create", allowed=allow_production)  # before any server
    result = lib.create(s, admin.resolve(s), count=count, prefix=prefix, seed=seed, reveal=reveal,
                        allow_production=allow_production)
    state = "built" if result.template_built else "up to date"
    lines = [f"template {result.template} ({state})"]
    lines += [f"created  {url}" for url in result.urls]
    lines.append(f"{len(result.databases)} database(s) in {result.seconds:.2f}s")
    emit(result.as_dict(), as_json, "\n".join(lines))


@testdb.command("drop")
@click.option("--prefix", default="dbkit_test_", show_default=True,
              help="Drop the test databases named PREFIX…")
@click.option("--all", "everything", is_flag=True,
              help="Also drop the templates and leftovers of killed test runs.")
@click.option("--local", is_flag=True, help="Use dbkit's own local PostgreSQL as the admin server.")
@click.option("--allow-production", is_flag=True,
              help="Do it even though DBKIT_ENV=production (refused there otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def drop(prefix: str, everything: bool, local: bool, allow_production: bool, as_json: bool) -> None:
    """Drop test databases (only those owned by dbkit's test role)."""
    from dbkit import admin
    from dbkit.testdb import commands as lib

    s = settings(local=local)
    s.refuse_in_production("dbkit testdb drop", allowed=allow_production)  # before any server
    result = lib.drop(s, admin.resolve(s), prefix=prefix, everything=everything,
                      allow_production=allow_production)
    text = "\n".join(f"dropped {d}" for d in result.dropped) or "nothing to drop"
    emit(result.as_dict(), as_json, text)
