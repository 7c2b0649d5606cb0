"""dbkit doctor: one line per check of the database and its configuration."""

from __future__ import annotations

import click

from dbkit.cli.common import cli, emit, settings


@cli.command()
@click.option("--long-transaction", "long_tx", type=click.FloatRange(min=0), default=300,
              show_default=True, help="Warn about transactions open longer than SECONDS.")
@click.option("--local", is_flag=True, help="Use dbkit's own local PostgreSQL as the admin server.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(long_tx: float, local: bool, as_json: bool) -> None:
    """Check the database and its configuration: one line per check (pass/warn/fail)."""
    from dbkit import admin
    from dbkit import doctor as doc
    from dbkit.errors import CheckFailed

    s = settings(local=local)
    target = s.target()
    server, why = admin.for_diagnosis(s)
    report = doc.run(target, server, why, long_transaction_s=long_tx)
    emit(report.as_dict(), as_json, "\n".join(c.line() for c in report.checks))
    if report.failed:
        raise CheckFailed(f"{len(report.failed)} check(s) failed: "
                          f"{', '.join(c.name for c in report.failed)}")
