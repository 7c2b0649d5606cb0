"""What every command module shares: the ``dbkit`` group and its options, settings resolved
once per command, output (text or ``--json``), confirmation, and the masked log handler."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from dbkit import NOTICE, __version__
from dbkit.errors import EXIT_CODES

if TYPE_CHECKING:
    import logging

    from dbkit.settings import Settings

# Every command: the module that defines it (imported on first use, so a run pays only for
# its own command's imports) and the first paragraph of its docstring, which ``dbkit --help``
# lists without importing any of them. tests/test_imports.py checks this table against the
# commands themselves.
COMMANDS: dict[str, tuple[str, str]] = {
    "completion": ("dbkit.cli.completion", "Print the shell completion script for SHELL."),
    "create": ("dbkit.cli.create",
               "Create the role and database named in DATABASE_URL (idempotent)."),
    "doctor": ("dbkit.cli.doctor",
               "Check the database and its configuration: one line per check (pass/warn/fail)."),
    "drop": ("dbkit.cli.create",
             "Drop the database and role(s) named in DATABASE_URL (the inverse of create)."),
    "dump": ("dbkit.cli.migrate",
             "The schema as SQL, for review and diffs: pg_dump --schema-only as the "
             "DATABASE_URL role, without dbkit's and yoyo's bookkeeping tables, then the applied "
             "migrations' ids as SQL comments (for review: loading the file does not record "
             "them)."),
    "history": ("dbkit.cli.migrate", "Every apply, rollback, mark and accept dbkit ran: who, "
                "where, when, how long, outcome."),
    "lint": ("dbkit.cli.lint",
             "Find statements in migration files that are unsafe on a live database."),
    "migrate": ("dbkit.cli.migrate",
                "Apply pending migrations, as the role in DBKIT_MIGRATE_URL / DATABASE_URL."),
    "new": ("dbkit.cli.migrate",
            "Write the next-numbered migration NNNN_NAME.sql and its .rollback.sql."),
    "reset": ("dbkit.cli.setup",
              "Replace the database with a freshly set-up one (create, migrate, seed)."),
    "rollback": ("dbkit.cli.migrate",
                 "Roll back applied migrations, newest first, with their .rollback.sql files."),
    "seed": ("dbkit.cli.seed", "Load data as the DATABASE_URL role, in one transaction."),
    "server": ("dbkit.cli.server",
               "dbkit's own local PostgreSQL (data under DBKIT_DATA_DIR, default ./.dbkit)."),
    "setup": ("dbkit.cli.setup",
              "Create (if needed), migrate and seed: one command to a working database."),
    "status": ("dbkit.cli.migrate", "Every migration, applied (with when) or pending; warns "
               "about edited applied files."),
    "testdb": ("dbkit.cli.testdb", "Isolated test databases cloned from a template kept at "
               "the latest migrations."),
    "verify": ("dbkit.cli.migrate", "Fail (exit 11) when an applied migration's file was "
               "edited, renamed or deleted."),
    "wait": ("dbkit.cli.wait",
             "Wait until the server accepts connections (for CI service containers)."),
}


class LazyGroup(click.Group):
    """The ``dbkit`` group: a command's module is imported when that command runs (or its
    own --help is asked for), never all of them up front."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, short = COMMANDS[cmd_name]
            if self._listing:  # the group's --help: a stand-in with the same first line
                return click.Command(cmd_name, help=short)
            importlib.import_module(module)  # registers its commands on this group
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False


_EXIT_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES)


class State:
    """What the group's options say, for the commands below it."""

    def __init__(self) -> None:
        self.env_file: str | None = None
        self.debug = False
        self.verbose = False


state = State()


@click.group(cls=LazyGroup, epilog=_EXIT_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dbkit")
@click.option("--env-file", type=click.Path(dir_okay=False), default=None,
              help="Read settings from this file instead of ./.env.")
@click.option("--debug", is_flag=True, help="Show tracebacks and every statement.")
@click.option("-v", "--verbose", is_flag=True, help="Show what is done (passwords masked).")
def cli(env_file: str | None, debug: bool, verbose: bool) -> None:
    """Give a PostgreSQL-backed application its own database: provision, migrate, seed."""
    state.env_file, state.debug, state.verbose = env_file, debug, verbose
    import logging  # here, not at the top: --help and --version never log

    logger = logging.getLogger("dbkit")
    for old in [h for h in logger.handlers if getattr(h, "dbkit_cli", False)]:
        logger.removeHandler(old)  # run() may be called many times in one process (tests)
    # Warnings always show (masked, one line each); everything else with -v / --debug.
    logger.addHandler(_handler(label=not (debug or verbose)))
    logger.setLevel(logging.DEBUG if debug else logging.INFO if verbose else NOTICE)
    logging.getLogger("dotenv").setLevel(logging.ERROR)  # dbkit names the unparsable line itself


_MIGRATIONS_HELP = ("Migrations directory (DBKIT_MIGRATIONS; default ./migrations, else the "
                    "packaged ones).")
_APP_ROLE_HELP = ("Two-role mode: also a DML-only role for the application (DBKIT_APP_ROLE; "
                  "kept in .env with its DBKIT_APP_URL).")


def migrations_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--migrations DIR``: the same option, spelled and explained the same, on every command
    that reads the migrations."""
    return click.option("--migrations", "migrations", type=click.Path(file_okay=False),
                        default=None, help=_MIGRATIONS_HELP)(f)


def app_role_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--app-role NAME`` on every command that provisions."""
    return click.option("--app-role", "app_role", default=None, metavar="NAME",
                        help=_APP_ROLE_HELP)(f)


def settings(**flags: Any) -> Settings:
    """Resolve settings once for a command: its flags, then env, then .env, then defaults."""
    from dbkit.settings import Settings

    flags.update(debug=state.debug, verbose=state.verbose)
    return Settings.load(flags=flags, env_file=state.env_file)


def emit(data: dict[str, Any] | list[Any], as_json: bool, text: str | None = None) -> None:
    if as_json:
        import json

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


def _handler(label: bool) -> logging.Handler:
    """The CLI's log handler on stderr: ``dbkit: warning: …`` for warnings (unless -v, where
    every line is a plain ``dbkit: …``), notices as plain lines; every record masked, and
    warnings kept to one line. (Built here so that logging is imported only by a command.)"""
    import logging

    from dbkit.urls import mask_secrets

    class Formatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            text = super().format(record)
            if label and record.levelno >= logging.WARNING:
                return text.replace("dbkit: ", "dbkit: warning: ", 1)
            return text

    class MaskFilter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            msg = mask_secrets(record.getMessage())
            record.msg = one_line(msg) if record.levelno >= logging.WARNING else msg
            record.args = ()
            return True

    handler = logging.StreamHandler(sys.stderr)
    handler.dbkit_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(Formatter("dbkit: %(message)s"))
    handler.addFilter(MaskFilter())
    return handler


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled, a container stopped), raised so that what a command has
    begun is undone on the way out exactly as for Ctrl-C."""


