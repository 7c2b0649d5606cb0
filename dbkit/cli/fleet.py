"""Fleet mode's options and output, shared by migrate, status, verify and doctor: ``--targets
FILE`` runs the command on every database listed, through ``dbkit.fleet``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from dbkit.cli.common import emit

if TYPE_CHECKING:
    from dbkit.fleet import FleetOptions, FleetReport, Outcome, Progress
    from dbkit.settings import Settings
    from dbkit.urls import DbURL


def fleet_options(*, canary: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def add(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option("--fail-fast", is_flag=True,
                         help="With --targets: start no new target after the first failure.")(f)
        if canary:
            f = click.option("--canary", type=click.IntRange(min=0), default=0, metavar="K",
                             help="With --targets: migrate the first K targets one by one "
                             "first, and stop if any fails.")(f)
        f = click.option("--per-server", type=click.IntRange(min=1), default=None, metavar="N",
                         help="With --targets: at most N targets at once on one server "
                         "(default 4).")(f)
        f = click.option("--parallel", type=click.IntRange(min=1), default=None, metavar="N",
                         help="With --targets: work on N targets at once (default 8).")(f)
        return click.option("--targets", "targets", default=None, metavar="FILE",
                            type=click.Path(dir_okay=False, path_type=Path),
                            help="Act on every database in FILE (one URL per line, # comments;"
                            " passwords may come from ~/.pgpass) instead of DATABASE_URL.")(f)
    return add


def options(parallel: int | None, per_server: int | None, canary: int = 0,
            fail_fast: bool = False) -> FleetOptions:
    from dbkit.fleet import DEFAULT_PARALLEL, DEFAULT_PER_SERVER, FleetOptions

    return FleetOptions(parallel=parallel or DEFAULT_PARALLEL,
                        per_server=per_server or DEFAULT_PER_SERVER, canary=canary,
                        fail_fast=fail_fast)


def load(s: Settings, targets: Path) -> list[DbURL]:
    from dbkit.fleet import read_targets

    return read_targets(targets, s)


def progress(as_json: bool) -> Progress | None:
    """A one-line bar on stderr when it is a terminal (never mixed into --json or logs)."""
    if as_json or not sys.stderr.isatty():
        return None
    counts: dict[str, int] = {}

    def show(outcome: Outcome, done: int, total: int) -> None:
        counts[outcome.outcome] = counts.get(outcome.outcome, 0) + 1
        width = 30
        filled = width * done // total
        tally = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        click.echo(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  {tally}\x1b[K",
                   err=True, nl=done == total)
    return show


def finish(report: FleetReport, as_json: bool) -> None:
    """Print the summary (or the JSON) and leave with the fleet's exit code."""
    if not as_json and sys.stderr.isatty() and len(report.outcomes) > \
            sum(1 for o in report.outcomes if o.outcome != "skipped"):
        click.echo(err=True)  # the bar stopped short of its end, and of its newline
    emit(report.as_dict(), as_json, summary(report))
    if report.exit_code:
        raise click.exceptions.Exit(report.exit_code)


def summary(report: FleetReport) -> str:
    total = len(report.outcomes)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts.items(),
                                                      key=lambda kv: -kv[1]))
    lines = [f"{report.command}: {total} target(s) in {report.seconds:.1f}s: {counts}"]
    if report.stopped_by:
        lines.append(f"stopped by {report.stopped_by}: targets not started are 'skipped'")
    if report.stopped_why:
        lines.append(f"stopped: {report.stopped_why}")
    slow = [o for o in report.slowest(3) if o.seconds > 0]
    if slow and total > 1:
        lines.append("slowest: " + ", ".join(f"{o.target} {o.seconds:.2f}s" for o in slow))
    lines += [f"{o.outcome}: {o.target}: {o.error}" for o in report.outcomes if o.error]
    return "\n".join(lines)
