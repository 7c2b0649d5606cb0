"""A CLI that imports only what its run needs, checked with ``python -X importtime`` on real
processes: ``--help`` and ``--version`` import none of psycopg, yoyo and pglast; the deploy
gate's no-op runs (``status --check`` and ``migrate`` on an up-to-date database) import
neither yoyo nor pglast. Each case runs its own process, so each can fail on its own; the
positive controls show the probe does see those imports when a run does need them."""

from __future__ import annotations

import os
import subprocess
import sys

import click
from click.testing import CliRunner

from dbkit.cli.common import COMMANDS, cli

HEAVY = ("psycopg", "yoyo", "pglast")


def imported(args: list[str], env: dict[str, str | None] | None = None,
             cwd: str | None = None) -> tuple[int, set[str], str]:
    """(exit code, top-level packages imported, stdout) of ``python -X importtime -m dbkit``."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("DBKIT_", "PG")) and k != "DATABASE_URL"}
    full.update({k: v for k, v in (env or {}).items() if v is not None})
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "dbkit", *args], cwd=cwd,
                          env=full, capture_output=True, text=True, timeout=120)
    names = {line.rsplit("|", 1)[1].strip().split(".")[0]
             for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return proc.returncode, names, proc.stdout


def test_help_imports_no_driver_no_yoyo_no_parser():
    code, names, out = imported(["--help"])
    assert code == 0 and "Commands:" in out
    assert not names & set(HEAVY), names & set(HEAVY)


def test_version_imports_no_driver_no_yoyo_no_parser():
    code, names, out = imported(["--version"])
    assert code == 0 and "dbkit" in out
    assert not names & set(HEAVY), names & set(HEAVY)


def test_a_command_help_imports_no_driver():
    code, names, _ = imported(["migrate", "--help"])
    assert code == 0
    assert not names & set(HEAVY), names & set(HEAVY)


def test_status_check_on_an_up_to_date_database_imports_no_yoyo_no_parser(migrated):
    code, names, out = imported(["status", "--check"], migrated.env(), str(migrated.cwd))
    assert code == 0 and "0 pending" in out
    assert "psycopg" in names  # it did connect: the probe sees imports
    assert not names & {"yoyo", "pglast"}, names & {"yoyo", "pglast"}


def test_noop_migrate_imports_no_yoyo_no_parser(migrated):
    code, names, out = imported(["migrate"], migrated.env(), str(migrated.cwd))
    assert code == 0 and "nothing to apply" in out
    assert not names & {"yoyo", "pglast"}, names & {"yoyo", "pglast"}


def test_status_check_with_pending_migrations_still_needs_no_parser(created):
    code, names, _ = imported(["status", "--check"], created.env(), str(created.cwd))
    assert code == 10
    assert not names & {"yoyo", "pglast"}, names & {"yoyo", "pglast"}


def test_control_a_migrate_that_applies_lints_them_with_pglast(created):
    """The probe's positive control: pending files are linted (pglast) and applied."""
    code, names, out = imported(["migrate"], created.env(), str(created.cwd))
    assert code == 0 and "applied" in out
    assert "pglast" in names


def test_the_lazy_command_table_is_the_commands_themselves():
    """``dbkit --help`` lists the commands from ``COMMANDS`` without importing them: the list
    must be exactly the one the loaded commands would give, line for line."""
    lazy = CliRunner().invoke(cli, ["--help"], prog_name="dbkit")
    for name in COMMANDS:  # loads every command module
        assert cli.get_command(click.Context(cli), name) is not None, name
    assert set(cli.commands) == set(COMMANDS)
    for name, (module, short) in COMMANDS.items():
        real = cli.commands[name]
        assert real.callback is not None and real.callback.__module__ == module, name
        assert " ".join((real.help or "").split("\n\n")[0].split()) == short, name
    eager = CliRunner().invoke(cli, ["--help"], prog_name="dbkit")
    assert lazy.exit_code == eager.exit_code == 0
    assert lazy.output == eager.output


def test_yoyo_schema_version_known_without_yoyo_is_yoyos():
    from yoyo import internalmigrations

    from dbkit.migrate.bookkeeping import YOYO_SCHEMA_VERSION

    assert max(internalmigrations.schema_versions) == YOYO_SCHEMA_VERSION
