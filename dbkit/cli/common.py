"""What every command module shares: the ``dbkit`` group and its options, settings resolved
once per command, output (text or ``--json``), confirmation, and the masked log handler."""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from dbkit import NOTICE, __version__
from dbkit.errors import EXIT_CODES
from dbkit.urls import mask_secrets

if TYPE_CHECKING:
    from dbkit.settings import Settings

_EXIT_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES)


class State:
    """What the group's options say, for the commands below it."""

    def __init__(self) -> None:
        self.env_file: str | None = None
        self.debug = False
        self.verbose = False


state = State()


@click.group(epilog=_EXIT_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dbkit")
@click.option("--env-file", type=click.Path(dir_okay=False), default=None,
              help="Read settings from this file instead of ./.env.")
@click.option("--debug", is_flag=True, help="Show tracebacks and every statement.")
@click.option("-v", "--verbose", is_flag=True, help="Show what is done (passwords masked).")
def cli(env_file: str | None, debug: bool, verbose: bool) -> None:
    """Give a PostgreSQL-backed application its own database: provision, migrate, seed."""
    state.env_file, state.debug, state.verbose = env_file, debug, verbose
    logger = logging.getLogger("dbkit")
    for old in [h for h in logger.handlers if getattr(h, "dbkit_cli", False)]:
        logger.removeHandler(old)  # run() may be called many times in one process (tests)
    # Warnings always show (masked, one line each); everything else with -v / --debug.
    handler = logging.StreamHandler(sys.stderr)
    handler.dbkit_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_Formatter(label=not (debug or verbose)))
    handler.addFilter(_MaskFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO if verbose else NOTICE)
    logging.getLogger("dotenv").setLevel(logging.ERROR)  # dbkit names the unparsable line itself


def settings(**flags: Any) -> Settings:
    """Resolve settings once for a command: its flags, then env, then .env, then defaults."""
    from dbkit.settings import Settings

    flags.update(debug=state.debug, verbose=state.verbose)
    return Settings.load(flags=flags, env_file=state.env_file)


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


# Every character str.splitlines() breaks at (log readers do the same), shown escaped.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(text: str) -> str:
    """Errors are one line: a name quoted into a message (a migration file whose name holds a
    newline or a form feed, say) must not break it into several, nor forge a line of its own."""
    return text.translate(_LINE_BREAKS)


class _Formatter(logging.Formatter):
    """``dbkit: warning: …`` for warnings (unless -v, where every line is a plain
    ``dbkit: …``); notices are plain lines."""

    def __init__(self, label: bool) -> None:
        super().__init__("dbkit: %(message)s")
        self.label = label

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.label and record.levelno >= logging.WARNING:
            return text.replace("dbkit: ", "dbkit: warning: ", 1)
        return text


class _MaskFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = mask_secrets(record.getMessage())
        record.msg = one_line(msg) if record.levelno >= logging.WARNING else msg
        record.args = ()
        return True


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled, a container stopped), raised so that what a command has
    begun is undone on the way out exactly as for Ctrl-C."""


