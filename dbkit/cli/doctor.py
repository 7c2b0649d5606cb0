"""dbkit doctor: one line per check of the database and its configuration."""

from __future__ import annotations

from pathlib import Path

import click

from dbkit.cli import fleet
from dbkit.cli.common import cli, emit, migrations_option, settings


@cli.command()
@click.option("--long-transaction", "long_tx", type=click.FloatRange(min=0), default=300,
              show_default=True, help="Warn about transactions open longer than SECONDS.")
@click.option("--local", is_flag=True, help="Use dbkit's own local PostgreSQL as the admin server.")
@migrations_option
@fleet.fleet_options()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(long_tx: float, local: bool, migrations: str | None, targets: Path | None,
           parallel: int | None, per_server: int | None, fail_fast: bool,
           as_json: bool) -> None:
    """Check the database and its configuration: one line per check (pass/warn/fail).

    With --targets FILE: the database checks on every database listed (the admin checks
    need one server: run plain dbkit doctor for those)."""
    from dbkit import admin
    from dbkit import doctor as doc
    from dbkit.errors import CheckFailed

    s = settings(local=local, migrations=migrations)
    if targets is not None:
        from dbkit.fleet import doctor_all

        fleet.finish(doctor_all(fleet.load(s, targets), s,
                                fleet.options(parallel, per_server, fail_fast=fail_fast),
                                long_transaction_s=long_tx, on_done=fleet.progress(as_json)),
                     as_json)
        return
    target = s.target()
    server, why = admin.for_diagnosis(s)
    report = doc.run(target, server, why, long_transaction_s=long_tx)
    emit(report.as_dict(), as_json, "\n".join(c.line() for c in report.checks))
    if report.failed:
        raise CheckFailed(f"{len(report.failed)} check(s) failed: "
                          f"{', '.join(c.name for c in report.failed)}")
