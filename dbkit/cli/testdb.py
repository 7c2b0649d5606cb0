"""dbkit wait / reset / testdb create|drop: the CI and test-database commands."""

from __future__ import annotations

import click

from dbkit.cli import cli, confirm, emit, settings


@cli.command()
@click.option("--timeout", "timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def wait(timeout: float, as_json: bool) -> None:
    """Wait until the server accepts connections (for CI service containers).

    Waits for DBKIT_ADMIN_URL's server (or PG* variables', else DATABASE_URL's). Like
    pg_isready, no login is needed: exit 0 as soon as the server answers, exit 4 after the
    timeout."""
    from dbkit import ci

    result = ci.wait_ready(settings(), timeout)
    emit(result.as_dict(), as_json, f"server at {result.url} accepts connections "
                                    f"(waited {result.seconds:.2f}s)")


@cli.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--env", "env", type=click.Choice(["development", "test", "production"]),
              default=None, help="Mark the environment (production refuses).")
@click.option("--no-seed", is_flag=True, help="Do not load the sample data after migrating.")
@click.option("--local", is_flag=True, help="Use dbkit's own local PostgreSQL as the admin server.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def reset(yes: bool, env: str | None, no_seed: bool, local: bool, as_json: bool) -> None:
    """Replace the database with a freshly set-up one (create, migrate, seed).

    All or nothing: the new database is built beside the old one and swapped in by renaming,
    then the old one is dropped (its sessions are ended). If any step fails, the old database
    is left as it was. The role and its password are kept. Refused when DBKIT_ENV=production
    or --env production (either one is enough)."""
    from dbkit import ci

    s = settings(local=local)
    ci.guard_reset(s, env)
    name = s.app_url().dbname if s.database_url else "posts"
    confirm(f"Replace database {name!r} and all its data with a fresh one?", yes)
    result = ci.reset(s, seed=not no_seed, env=env)
    lines = [f"reset {result.url}"] + [f"  {st['step']:<8} {st['detail']}" for st in result.steps]
    emit(result.as_dict(), as_json, "\n".join(lines))


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
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def create(count: int, prefix: str, seed: bool, reveal: bool, local: bool, as_json: bool) -> None:
    """Create COUNT fresh databases at the latest schema (existing ones are replaced).

    The template is rebuilt first when the migration files changed."""
    from dbkit import testdb as lib

    result = lib.create(settings(local=local), count=count, prefix=prefix, seed=seed,
                        reveal=reveal)
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
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def drop(prefix: str, everything: bool, local: bool, as_json: bool) -> None:
    """Drop test databases (only those owned by dbkit's test role)."""
    from dbkit import testdb as lib

    result = lib.drop(settings(local=local), prefix=prefix, everything=everything)
    text = "\n".join(f"dropped {d}" for d in result.dropped) or "nothing to drop"
    emit(result.as_dict(), as_json, text)
