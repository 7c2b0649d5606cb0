"""One exception family. Each kind carries its exit code and a one-line hint.

The CLI maps these to output and exit status in one place (``dbkit.cli.run``); driver errors
become these in one place too (``dbkit.db.translate``). Library callers can catch ``DbkitError``
or a specific kind. Exit code 1 is kept for bugs: anything dbkit did not raise on purpose.
"""

from __future__ import annotations


class DbkitError(Exception):
    """Base of every error dbkit raises on purpose."""

    exit_code = 1
    hint = "re-run with --debug for details"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(DbkitError):
    """Settings are missing or malformed (bad URL, bad .env, bad option)."""

    exit_code = 3
    hint = "check DATABASE_URL / DBKIT_* settings (see .env.example)"


class InvalidURL(ConfigError):
    hint = "use postgresql://role:password@host:port/database"


class ConnectError(DbkitError):
    """The server did not answer or refused the login."""

    exit_code = 4
    hint = "check the server is running and the URL is right (try: dbkit wait)"


class NoPrimary(ConnectError):
    """Only standbys (read-only servers) answered, and the URL asks for a read-write one."""

    hint = ("wait for the primary (dbkit wait), or add the primary's host to the URL "
            "(postgresql://role@primary:5432,standby:5432/db?target_session_attrs=read-write)")


class UnsupportedServer(ConnectError):
    """The server's major version is older than dbkit supports."""

    hint = "upgrade the server (PostgreSQL 15, 17 and 18 are tested)"


class ReadOnlyServer(ConnectError):
    """The server is a standby (in recovery, read-only): nothing can be written there."""

    hint = ("use the primary's URL, or list every host and add "
            "?target_session_attrs=read-write so libpq picks the primary")


class ReplicasBehind(ConnectError):
    """Streaming replicas did not replay the last commit within the wait."""

    hint = ("dbkit doctor shows each replica's lag; dbkit migrate --wait-replicas again waits "
            "for them without applying anything twice")


class PermissionDenied(DbkitError):
    """The connected role lacks a privilege the operation needs."""

    exit_code = 5
    hint = "use an admin connection with CREATEROLE and CREATEDB (DBKIT_ADMIN_URL)"


class InvalidName(DbkitError):
    """A database or role name is reserved, empty, too long or otherwise refused."""

    exit_code = 6
    hint = "choose another name in DATABASE_URL"


class Conflict(DbkitError):
    """Something exists in a state dbkit will not take over (e.g. a foreign owner)."""

    exit_code = 7
    hint = "drop or rename the existing object, or choose another name"


class MigrationError(DbkitError):
    """A migration failed; it was rolled back, earlier ones stay applied."""

    exit_code = 8
    hint = "fix the migration file and run dbkit migrate again"


class LockTimeout(DbkitError):
    """Another process holds the migration lock (or a table lock) for too long."""

    exit_code = 9
    hint = "another migration is running; retry later or raise --lock-timeout"


class PendingMigrations(DbkitError):
    """Migrations are pending (status --check: a deploy gate)."""

    exit_code = 10
    hint = "run dbkit migrate"


class DriftDetected(DbkitError):
    """An applied migration's file was edited, renamed or deleted."""

    exit_code = 11
    hint = "restore the original file; write a new migration for new changes"


class LintFindings(DbkitError):
    """The migration linter found unsafe operations."""

    exit_code = 12
    hint = "rewrite the statement safely, or pass --allow-unsafe"


class SchemaNotReady(DbkitError):
    """The schema is missing or migrations are pending."""

    exit_code = 13
    hint = "run dbkit migrate first"


class DataError(DbkitError):
    """Seed input is malformed (names the file, line and column)."""

    exit_code = 14
    hint = "fix the input file; nothing was loaded"


class ServerError(DbkitError):
    """dbkit's local PostgreSQL could not be found, initialised or started."""

    exit_code = 15
    hint = "see dbkit server status; install PostgreSQL or set DBKIT_PG_BIN"


class Refused(DbkitError):
    """A guarded operation was refused (production, or no confirmation)."""

    exit_code = 16
    hint = "pass --yes to confirm; never on production"


class CheckFailed(DbkitError):
    """A doctor check failed."""

    exit_code = 17
    hint = "fix the failing checks listed above"


class ServerRefused(DbkitError):
    """The server refused the operation for another reason (its message says which)."""

    exit_code = 18
    hint = "the server's message says what it needs; nothing was left half-done"


def first_line(exc: BaseException) -> str:
    """The useful first line of an exception's text (libpq puts it after its last 'failed: ')."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else exc.__class__.__name__
    return text.rsplit("failed: ", 1)[-1] if "failed: " in text else text


# For README and --help: (code, meaning), generated from the classes so they cannot drift.
EXIT_CODES: list[tuple[int, str]] = [(0, "success"), (1, "unexpected error (use --debug)"),
                                     (2, "usage error (bad option or argument)")] + sorted(
    {
        (cls.exit_code, (cls.__doc__ or "").strip().splitlines()[0])
        for cls in (ConfigError, ConnectError, PermissionDenied, InvalidName, Conflict,
                    MigrationError, LockTimeout, PendingMigrations, DriftDetected, LintFindings,
                    SchemaNotReady, DataError, ServerError, Refused, CheckFailed, ServerRefused)
    }
) + [(130, "interrupted (Ctrl-C)"), (143, "terminated (SIGTERM); begun work undone first")]
