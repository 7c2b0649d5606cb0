"""dbkit lint: statements in migration files that are unsafe on a live database."""

from __future__ import annotations

from pathlib import Path

import click

from dbkit.cli.common import cli, emit, migrations_option, settings


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--rules", "list_rules", is_flag=True, help="List the rules and exit.")
@migrations_option
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def lint(paths: tuple[Path, ...], list_rules: bool, migrations: str | None,
         as_json: bool) -> None:
    """Find statements in migration files that are unsafe on a live database.

    PATHS are .sql files or directories (default: the migrations directory); in a directory,
    *.rollback.sql files are skipped. Silence one statement with a comment
    '-- dbkit: ignore RULE-ID' (or '-- dbkit: ignore[RULE-ID, ...]') inside or above it.
    Exit 12 when an error-level finding remains; warnings are shown only.
    """
    from dbkit.errors import LintFindings
    from dbkit.lint import engine as linter

    if list_rules:
        rows = linter.rules()
        emit(rows, as_json, "\n".join(f"{r['id']:<28} {r['title']}" for r in rows))
        return
    targets = list(paths) or [_migrations_dir(migrations)]
    files = linter.migration_files(targets)
    findings = linter.lint_paths(files)
    if as_json:
        emit({"files": len(files), "findings": [f.to_dict() for f in findings]}, True)
    elif findings:
        click.echo("\n".join(str(f) for f in findings))
    else:
        click.echo(f"{len(files)} file(s) checked: no unsafe statements")
    errors = [f for f in findings if f.severity == "error"]
    if errors:  # warnings are shown, never fail the run
        n_files = len({f.path for f in errors})
        raise LintFindings(f"{len(errors)} unsafe statement(s) in {n_files} file(s)",
                           hint="rewrite them as each fix says, or add '-- dbkit: ignore RULE-ID' "
                           "where the statement is safe for your data")


def _migrations_dir(migrations: str | None) -> Path:
    """The directory dbkit migrate uses (DBKIT_MIGRATIONS, ./migrations, or the shipped ones)."""
    from dbkit.errors import ConfigError
    from dbkit.migrate.files import migrations_dir

    path = migrations_dir(settings(migrations=migrations))
    if not path.is_dir():
        raise ConfigError(f"migrations directory {path} does not exist",
                          hint="pass files or directories, or set DBKIT_MIGRATIONS")
    return path
