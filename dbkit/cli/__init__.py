"""The ``dbkit`` command: a thin skin over the library.

Each command parses options, resolves ``Settings`` once, calls one library function and renders
text or ``--json``. Errors are mapped to output and exit codes here, in ``main`` only.
Command modules import psycopg/yoyo inside their functions so ``dbkit --help`` stays fast.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import sys
import traceback
from typing import Any

import click

from dbkit import __version__
from dbkit.errors import EXIT_CODES, DbkitError

# Each module registers its commands on ``cli`` when imported (see the end of this file).
COMMAND_MODULES = ("provision", "server", "testdb", "ops", "migrate", "seed")

_EXIT_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES)


class State:
    """What the group's options say, for the commands below it."""

    def __init__(self) -> None:
        self.env_file: str | None = None
        self.debug = False
        self.verbose = False


_state = State()


@click.group(epilog=_EXIT_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dbkit")
@click.option("--env-file", type=click.Path(dir_okay=False), default=None,
              help="Read settings from this file instead of ./.env.")
@click.option("--debug", is_flag=True, help="Show tracebacks and every statement.")
@click.option("-v", "--verbose", is_flag=True, help="Show what is done (passwords masked).")
def cli(env_file: str | None, debug: bool, verbose: bool) -> None:
    """Give a PostgreSQL-backed application its own database: provision, migrate, seed."""
    _state.env_file, _state.debug, _state.verbose = env_file, debug, verbose
    logger = logging.getLogger("dbkit")
    for old in [h for h in logger.handlers if getattr(h, "dbkit_cli", False)]:
        logger.removeHandler(old)  # run() may be called many times in one process (tests)
    # Warnings always show (masked, one line each); everything else with -v / --debug.
    handler = logging.StreamHandler(sys.stderr)
    handler.dbkit_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("dbkit: %(message)s" if debug or verbose
                                           else "dbkit: warning: %(message)s"))
    handler.addFilter(_MaskFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    logging.getLogger("dotenv").setLevel(logging.ERROR)  # dbkit names the unparsable line itself


def settings(**flags: Any):  # -> Settings; typed loosely to keep the import lazy
    """Resolve settings once for a command: its flags, then env, then .env, then defaults."""
    from dbkit.settings import Settings

    flags.update(debug=_state.debug, verbose=_state.verbose)
    return Settings.load(flags=flags, env_file=_state.env_file)


def emit(data: dict[str, Any] | list[Any], as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    elif text:
        click.echo(text)


def confirm(question: str, yes: bool) -> None:
    """Ask on a terminal; elsewhere insist on --yes."""
    from dbkit.errors import Refused

    if yes:
        return
    if not sys.stdin.isatty():
        raise Refused(f"{question} needs confirmation", hint="pass --yes (no terminal to ask on)")
    if not click.confirm(question, default=False):
        raise Refused("not confirmed", hint="nothing was changed")


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def scrub(text: str) -> str:
    """Mask anything that looks like a password inside a URL."""
    return _URL_PASSWORD.sub(r"\1***@", text)


# Every character str.splitlines() breaks at (log readers do the same), shown escaped.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(text: str) -> str:
    """Errors are one line: a name quoted into a message (a migration file whose name holds a
    newline or a form feed, say) must not break it into several, nor forge a line of its own."""
    return text.translate(_LINE_BREAKS)


class _MaskFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = scrub(record.getMessage())
        record.msg = one_line(msg) if record.levelno >= logging.WARNING else msg
        record.args = ()
        return True


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled, a container stopped), raised so that what a command has
    begun is undone on the way out exactly as for Ctrl-C."""


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
        cli.main(args=argv, prog_name="dbkit", standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort as exc:  # click turns Ctrl-C (and so SIGTERM) into Abort
        if isinstance(exc.__context__, Terminated):
            click.echo("dbkit: terminated", err=True)
            return 143
        click.echo("dbkit: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except DbkitError as exc:
        if _state.debug:
            traceback.print_exc()
        click.echo(one_line(f"dbkit: error: {scrub(exc.message)} (hint: {exc.hint})"), err=True)
        return exc.exit_code
    except Terminated:
        click.echo("dbkit: terminated", err=True)
        return 143
    except KeyboardInterrupt:
        click.echo("dbkit: interrupted", err=True)
        return 130
    except Exception as exc:  # a bug or an unforeseen failure: still one line, still masked
        if _state.debug:
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        click.echo(f"dbkit: unexpected error: {exc.__class__.__name__}: {scrub(first)} "
                   "(hint: re-run with --debug and report it)", err=True)
        return 1


for _name in COMMAND_MODULES:
    importlib.import_module(f"dbkit.cli.{_name}")
