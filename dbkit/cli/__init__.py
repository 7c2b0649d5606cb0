"""The ``dbkit`` command: a thin skin over the library.

Each command parses options, resolves ``Settings`` once, calls one library function and renders
text or ``--json``. Errors become output and exit codes here, in ``run`` only. One module per
command group, named after its commands, imported only when one of its commands runs
(``common.COMMANDS``); they import psycopg, yoyo and pglast only inside their functions, and
only on the paths that need them, so ``dbkit --help`` and a no-op deploy gate start fast
(tests/test_imports.py).
"""

from __future__ import annotations

import sys

import click

from dbkit.cli.common import Terminated, cli, one_line, state
from dbkit.errors import DbkitError


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> None:
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    code = run(argv)
    sys.exit(code)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (the only place errors become output)."""
    try:
        # Outside standalone mode click returns an Exit's code instead of raising it.
        code = cli.main(args=argv, prog_name="dbkit", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort as exc:  # click turns Ctrl-C (and so SIGTERM) into Abort
        if isinstance(exc.__context__, Terminated):
            click.echo("dbkit: terminated", err=True)
            return 143
        click.echo("dbkit: aborted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:  # `dbkit`, `dbkit testdb` alone
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        return 2
    except click.UsageError as exc:  # a bad option or argument: dbkit's one-line form, exit 2
        where = exc.ctx.command_path if exc.ctx is not None else "dbkit"
        click.echo(one_line(f"dbkit: error: {exc.format_message()} (hint: see "
                            f"'{where} --help')"), err=True)
        return 2
    except click.ClickException as exc:
        click.echo(one_line(f"dbkit: error: {exc.format_message()}"), err=True)
        return exc.exit_code
    except DbkitError as exc:
        return run_error(exc)
    except Terminated:
        click.echo("dbkit: terminated", err=True)
        return 143
    except KeyboardInterrupt:
        click.echo("dbkit: interrupted", err=True)
        return 130
    except Exception as exc:  # a bug or an unforeseen failure: still one line, still masked
        from dbkit.db import as_refusal
        from dbkit.errors import first_line
        from dbkit.urls import mask_secrets

        refused = as_refusal(exc)  # a server's "no" that no caller named: never exit 1
        if refused is not None:
            return run_error(refused)
        if state.debug:
            import traceback

            traceback.print_exc()
        click.echo(f"dbkit: unexpected error: {exc.__class__.__name__}: "
                   f"{one_line(mask_secrets(first_line(exc)))} "
                   "(hint: re-run with --debug and report it)", err=True)
        return 1


def run_error(exc: DbkitError) -> int:
    """One line on stderr, masked; the traceback only with --debug."""
    from dbkit.urls import mask_secrets

    if state.debug:
        import traceback

        traceback.print_exc()
    click.echo(one_line(f"dbkit: error: {mask_secrets(exc.message)} (hint: {exc.hint})"), err=True)
    return exc.exit_code
