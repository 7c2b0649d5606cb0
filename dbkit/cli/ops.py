"""dbkit lint / doctor: production safety checks."""

from __future__ import annotations

from pathlib import Path

import click

from dbkit.cli import cli, emit, settings


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--rules", "list_rules", is_flag=True, help="List the rules and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def lint(paths: tuple[Path, ...], list_rules: bool, as_json: bool) -> None:
    """Find statements in migration files that are unsafe on a live database.

    PATHS are .sql files or directories (default: the migrations directory); in a directory,
    *.rollback.sql files are skipped. Silence one statement with a comment
    '-- dbkit: ignore RULE-ID' inside or above it.
    """
    from dbkit import lint as linter
    from dbkit.errors import LintFindings

    if list_rules:
        rows = linter.rules()
        emit(rows, as_json, "\n".join(f"{r['id']:<28} {r['title']}" for r in rows))
        return
    targets = list(paths) or [_migrations_dir()]
    files = linter.migration_files(targets)
    findings = linter.lint_paths(files)
    if as_json:
        emit({"files": len(files), "findings": [f.to_dict() for f in findings]}, True)
    elif findings:
        click.echo("\n".join(str(f) for f in findings))
    else:
        click.echo(f"{len(files)} file(s) checked: no unsafe statements")
    if findings:
        n_files = len({f.path for f in findings})
        raise LintFindings(f"{len(findings)} unsafe statement(s) in {n_files} file(s)",
                           hint="rewrite them as each fix says, or add '-- dbkit: ignore RULE-ID' "
                           "where the statement is safe for your data")


def _migrations_dir() -> Path:
    """The directory dbkit migrate uses (DBKIT_MIGRATIONS, ./migrations, or the shipped ones)."""
    from dbkit.errors import ConfigError
    from dbkit.migrate import migrations_dir

    path = migrations_dir(settings())
    if not path.is_dir():
        raise ConfigError(f"migrations directory {path} does not exist",
                          hint="pass files or directories, or set DBKIT_MIGRATIONS")
    return path


@cli.command()
@click.option("--long-transaction", "long_tx", type=click.FloatRange(min=0), default=300,
              show_default=True, help="Warn about transactions open longer than SECONDS.")
@click.option("--local", is_flag=True, help="Use dbkit's own local PostgreSQL as the admin server.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(long_tx: float, local: bool, as_json: bool) -> None:
    """Check the database and its configuration: one line per check (pass/warn/fail)."""
    from dbkit import doctor as doc
    from dbkit.errors import CheckFailed

    report = doc.run(settings(local=local), long_transaction_s=long_tx)
    emit(report.as_dict(), as_json, "\n".join(c.line() for c in report.checks))
    if report.failed:
        raise CheckFailed(f"{len(report.failed)} check(s) failed: "
                          f"{', '.join(c.name for c in report.failed)}")
