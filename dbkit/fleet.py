"""One command over a fleet of databases (a database per tenant, shards, staging copies):
``migrate``, ``status``, ``verify`` and ``doctor`` with ``--targets FILE``.

Each target is still all or nothing per migration (``dbkit.migrate``); what this module adds is
the walk over many of them: in parallel, with a per-server cap so one server is not flooded,
canaries first, a failure never stopping the others unless ``fail_fast``, and SIGINT/SIGTERM
stopping the start of new targets while running ones finish (or roll back). Advisory locks are
per database, so targets never wait for each other's migration lock.

Library API::

    read_targets(path, settings) -> list[DbURL]            patterns (tenant_*) expanded
    migrate_all(targets, settings, options, *, to=None, allow_unsafe=False,
                wait_replicas_ms=None) -> FleetReport
    status_all(targets, settings, options, *, check=False) -> FleetReport
    verify_all(targets, settings, options) -> FleetReport
    doctor_all(targets, settings, options, *, long_transaction_s=300) -> FleetReport
"""

from __future__ import annotations

import fnmatch
import logging
import re
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbkit.admin import server_of
from dbkit.errors import (
    CheckFailed,
    ConfigError,
    ConnectError,
    DbkitError,
    DriftDetected,
    InvalidURL,
    MigrationError,
    PendingMigrations,
    first_line,
)
from dbkit.settings import Settings, Target
from dbkit.urls import DbURL, mask_secrets

log = logging.getLogger("dbkit")

DEFAULT_PARALLEL = 8
DEFAULT_PER_SERVER = 4  # sessions per server at once: each migrating target holds two

# The order in which outcomes decide the exit code: a failed migration matters most, then a
# target nobody could reach; "behind" only counts for ``status --check``.
_EXIT_PRIORITY = (MigrationError.exit_code, ConnectError.exit_code)


@dataclass(frozen=True)
class FleetOptions:
    parallel: int = DEFAULT_PARALLEL
    per_server: int = DEFAULT_PER_SERVER
    canary: int = 0
    fail_fast: bool = False


@dataclass
class Outcome:
    """What happened to one target."""

    target: str  # masked URL
    outcome: str  # applied, up to date, behind, ok, failed, drift, unreachable, error, skipped
    exit_code: int = 0
    seconds: float = 0.0
    error: str | None = None  # one line, masked
    result: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "outcome": self.outcome, "exit_code": self.exit_code,
                "seconds": round(self.seconds, 3), "error": self.error, "result": self.result}


@dataclass
class FleetReport:
    command: str
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by: str | None = None  # "SIGINT"/"SIGTERM" when a signal stopped the walk
    stopped_why: str | None = None  # canary failed, --fail-fast

    @property
    def counts(self) -> dict[str, int]:
        return dict(Counter(o.outcome for o in self.outcomes))

    def slowest(self, n: int = 5) -> list[Outcome]:
        ran = [o for o in self.outcomes if o.outcome != "skipped"]
        return sorted(ran, key=lambda o: o.seconds, reverse=True)[:n]

    @property
    def exit_code(self) -> int:
        """0 all good; 8 when any migration failed; else 4 when a target could not be
        reached; else another failure's code; 10 when a target is behind (status --check);
        130/143 when SIGINT/SIGTERM stopped the walk."""
        if self.stopped_by is not None:
            return 143 if self.stopped_by == "SIGTERM" else 130
        codes = {o.exit_code for o in self.outcomes} - {0}
        for code in _EXIT_PRIORITY:
            if code in codes:
                return code
        others = codes - {PendingMigrations.exit_code}
        if others:
            return max(others)
        return PendingMigrations.exit_code if codes else 0

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.command, "exit_code": self.exit_code, "counts": self.counts,
                "seconds": round(self.seconds, 3), "stopped_by": self.stopped_by,
                "stopped_why": self.stopped_why,
                "slowest": [{"target": o.target, "seconds": round(o.seconds, 3)}
                            for o in self.slowest()],
                "targets": [o.as_dict() for o in self.outcomes]}


# -- the targets ------------------------------------------------------------------------
def read_targets(path: Path, settings: Settings) -> list[DbURL]:
    """One connection URL per line; blank lines and ``#`` comments are ignored. Passwords
    may be left out and come from ~/.pgpass (or PGPASSFILE), as libpq finds them. A database
    name with ``*`` or ``?`` (``postgresql://app@db1/tenant_*``) stands for every database on
    that server whose name matches, in name order."""
    if not path.is_absolute():
        path = settings.cwd / path
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"targets file {path} does not exist",
                          hint="give a file with one postgresql:// URL per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read targets file {path} ({exc.__class__.__name__})",
                          hint="give a readable UTF-8 file with one URL per line") from None
    urls: list[DbURL] = []
    seen: dict[tuple[Any, ...], int] = {}
    for number, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{path.name}:{number}"
        url = DbURL.parse(text, what=where)  # InvalidURL names the line, never quotes it
        if not url.dbname or not url.user:
            raise InvalidURL(f"{where}: the URL must name both a role and a database",
                             hint="write postgresql://role@host:port/database (the password "
                             "may come from ~/.pgpass)")
        pattern = _PATTERN.search(url.dbname) is not None
        for one in _matching(url, settings, where) if pattern else [url]:
            key = (*server_of(one, settings), one.dbname)
            if key in seen:
                if pattern:  # a pattern may overlap a line: the database runs once
                    continue
                # the same database twice would only wait for its own lock
                raise ConfigError(f"{where}: the same database as line {seen[key]}",
                                  hint="list each database once")
            seen[key] = number
            urls.append(one)
    if not urls:
        raise ConfigError(f"targets file {path} lists no databases",
                          hint="write one postgresql:// URL per line (# starts a comment)")
    return urls


_PATTERN = re.compile(r"[*?]")


def _matching(url: DbURL, settings: Settings, where: str) -> list[DbURL]:
    """The databases on ``url``'s server whose names match its pattern (any role may read
    pg_database), asked from the maintenance database."""
    from dbkit.db import connect

    assert url.dbname is not None
    with connect(url.with_(dbname="postgres"), settings, autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
            "ORDER BY datname")]
    found = [url.with_(dbname=n) for n in names if fnmatch.fnmatchcase(n, url.dbname)]
    if not found:
        raise ConfigError(f"{where}: no database on {url.with_(dbname=None)} matches "
                          f"{url.dbname!r}", hint="check the pattern (* and ? as in a shell)")
    return found


# -- the walk ---------------------------------------------------------------------------
Work = Callable[[Target], Outcome]
Progress = Callable[[Outcome, int, int], None]


def run(command: str, targets: Sequence[DbURL], settings: Settings, work: Work,
        options: FleetOptions, on_done: Progress | None = None) -> FleetReport:
    """``work`` on every target, ``options.parallel`` at a time and at most
    ``options.per_server`` per server; outcomes in the order of ``targets``."""
    if options.parallel < 1 or options.per_server < 1 or options.canary < 0:
        raise ConfigError("--parallel and --per-server must be at least 1, --canary at least 0")
    report = FleetReport(command)
    slots: list[Outcome | None] = [None] * len(targets)
    start = time.monotonic()
    done = 0

    def finish(i: int, outcome: Outcome) -> None:
        nonlocal done
        slots[i] = outcome
        done += 1
        if on_done is not None:
            on_done(outcome, done, len(targets))

    order = list(range(len(targets)))
    canaries, rest = order[:options.canary], order[options.canary:]
    naming = _NameTarget()
    log.addFilter(naming)
    try:
        with _signals() as stop, ThreadPoolExecutor(max_workers=options.parallel,
                                                    thread_name_prefix="dbkit-fleet") as pool:
            # Canaries one at a time: the first failure stops everything, so nothing but the
            # canaries tried so far has changed.
            for i in canaries:
                if stop.is_set():
                    break
                outcome = _one(targets[i], settings, work)
                finish(i, outcome)
                if outcome.exit_code not in (0, PendingMigrations.exit_code):
                    report.stopped_why = (f"canary {outcome.target} failed; no other target "
                                          "started")
                    stop.set()
            if not stop.is_set():
                _walk(rest, targets, settings, work, options, pool, stop, finish, report)
    finally:
        log.removeFilter(naming)
    report.stopped_by = stop.signal_name
    for i, target in enumerate(targets):
        report.outcomes.append(slots[i] or Outcome(str(target), "skipped"))
    report.seconds = time.monotonic() - start
    return report


def _walk(order: list[int], targets: Sequence[DbURL], settings: Settings, work: Work,
          options: FleetOptions, pool: ThreadPoolExecutor, stop: _Stop,
          finish: Callable[[int, Outcome], None], report: FleetReport) -> None:
    """Start targets in file order, skipping over those whose server is at its cap (they
    start as soon as it has room): every server is kept busy up to its cap and none gets
    more."""
    queues: dict[tuple[str, int], deque[int]] = {}
    for i in order:
        queues.setdefault(server_of(targets[i], settings), deque()).append(i)
    busy: Counter[tuple[str, int]] = Counter()
    running: dict[Future[Outcome], tuple[int, tuple[str, int]]] = {}
    while running or (any(queues.values()) and not stop.is_set()):
        while not stop.is_set() and len(running) < options.parallel:
            # the earliest target in the file whose server has room
            free = [q for server, q in queues.items() if q and busy[server] < options.per_server]
            if not free:
                break
            queue = min(free, key=lambda q: q[0])
            i = queue.popleft()
            server = server_of(targets[i], settings)
            busy[server] += 1
            running[pool.submit(_one, targets[i], settings, work)] = (i, server)
        if not running:
            break
        # A short wait, so a signal is noticed between completions.
        finished, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
        for future in finished:
            i, server = running.pop(future)
            busy[server] -= 1
            outcome = future.result()
            finish(i, outcome)
            if options.fail_fast and outcome.exit_code not in (0, PendingMigrations.exit_code) \
                    and not stop.is_set():
                report.stopped_why = f"--fail-fast: {outcome.target} failed"
                stop.set()


def _one(url: DbURL, settings: Settings, work: Work) -> Outcome:
    """One target; every failure becomes its outcome (one line, masked), never the walk's."""
    from dbkit.db import as_refusal

    start = time.monotonic()
    shown = str(url)
    host, port = server_of(url, settings)
    _current.where = f"{host}:{port}/{url.dbname}"
    try:
        outcome = work(Target.of(url, settings))
    except DbkitError as exc:
        outcome = _failed(exc)
    except Exception as exc:  # a bug on one target must not hide the others' outcomes
        refused = as_refusal(exc)
        outcome = _failed(refused) if refused is not None else Outcome(
            "", "error", 1, error=f"unexpected error: {exc.__class__.__name__}: "
            f"{mask_secrets(first_line(exc))}")
    finally:
        _current.where = None
    outcome.target = shown
    outcome.seconds = time.monotonic() - start
    return outcome


def _failed(exc: DbkitError) -> Outcome:
    kind = ("failed" if isinstance(exc, MigrationError) else
            "unreachable" if isinstance(exc, ConnectError) else
            "drift" if isinstance(exc, DriftDetected) else "error")
    return Outcome("", kind, exc.exit_code,
                   error=" ".join(mask_secrets(f"{exc.message} (hint: {exc.hint})").split()))


_current = threading.local()  # the target a fleet thread works on, for its log lines


class _NameTarget(logging.Filter):
    """Prefix what a fleet thread logs with its target: eight targets' "applying 0002" lines
    interleaved say nothing otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        where = getattr(_current, "where", None)
        if where is not None:
            record.msg, record.args = f"{where}: {record.getMessage()}", ()
        return True


class _Stop(threading.Event):
    signal_name: str | None = None


@contextmanager
def _signals() -> Iterator[_Stop]:
    """SIGINT and SIGTERM stop new targets from starting; running ones finish or roll back
    on their own. A second signal is the default one again (stop now)."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        stop.signal_name = signal.Signals(signum).name
        stop.set()
        log.warning("%s: no new targets will start; waiting for the running ones",
                    stop.signal_name)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- the commands -----------------------------------------------------------------------
def migrate_all(targets: Sequence[DbURL], settings: Settings, options: FleetOptions,
                *, to: str | None = None, allow_unsafe: bool = False,
                wait_replicas_ms: int | None = None,
                on_done: Progress | None = None) -> FleetReport:
    from dbkit.migrate import commands as m

    def work(target: Target) -> Outcome:
        result = m.migrate(target, to=to, allow_unsafe=allow_unsafe,
                           wait_replicas_ms=wait_replicas_ms)
        return Outcome("", "applied" if result.applied else "up to date",
                       result=result.as_dict())

    return run("migrate", targets, settings, work, options, on_done)


def status_all(targets: Sequence[DbURL], settings: Settings, options: FleetOptions,
               *, check: bool = False, on_done: Progress | None = None) -> FleetReport:
    from dbkit.migrate import commands as m

    def work(target: Target) -> Outcome:
        report = m.status(target)
        behind = bool(report.pending)
        return Outcome("", "behind" if behind else "up to date",
                       PendingMigrations.exit_code if behind and check else 0,
                       error=f"{len(report.pending)} migration(s) pending" if behind else None,
                       result=report.as_dict())

    return run("status", targets, settings, work, options, on_done)


def verify_all(targets: Sequence[DbURL], settings: Settings, options: FleetOptions,
               *, on_done: Progress | None = None) -> FleetReport:
    from dbkit.migrate import commands as m

    def work(target: Target) -> Outcome:
        return Outcome("", "ok", result=m.verify(target).as_dict())

    return run("verify", targets, settings, work, options, on_done)


def doctor_all(targets: Sequence[DbURL], settings: Settings, options: FleetOptions,
               *, long_transaction_s: float = 300,
               on_done: Progress | None = None) -> FleetReport:
    """The database checks on every target; the admin checks need one server, so they are
    left to a plain ``dbkit doctor``."""
    from dbkit import doctor as doc

    def work(target: Target) -> Outcome:
        report = doc.run(target, None, "fleet mode checks the databases only",
                         long_transaction_s=long_transaction_s)
        failed = report.failed
        return Outcome("", "failed checks" if failed else "ok",
                       CheckFailed.exit_code if failed else 0,
                       error=", ".join(c.name for c in failed) or None,
                       result=report.as_dict())

    return run("doctor", targets, settings, work, options, on_done)
