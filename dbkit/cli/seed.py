"""dbkit seed: sample data, synthetic volume (--users/--posts/--votes) or files (--from)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dbkit.cli.common import cli, emit, migrations_option, settings

if TYPE_CHECKING:
    from dbkit.seed.commands import SeedResult


@cli.command()
@click.option("--users", type=click.IntRange(min=0), default=None, help="Synthetic users to add.")
@click.option("--posts", type=click.IntRange(min=0), default=None, help="Synthetic posts to add.")
@click.option("--votes", type=click.IntRange(min=0), default=None,
              help="Synthetic votes to add (unique per post and user).")
@click.option("--seed", "seed_value", type=int, default=None,
              help="Random seed for synthetic data (default 0): same seed, same rows.")
@click.option("--append", is_flag=True,
              help="Synthetic data on tables that already hold rows: add after the highest ids.")
@click.option("--from", "sources", type=click.Path(exists=False, path_type=Path), multiple=True,
              help="Load CSV/JSON/JSONL files: a directory holding users/posts/votes files, or "
              "files named after their table (repeatable).")
@click.option("--dry-run", is_flag=True, help="Do all the work, report it, then roll it back.")
@click.option("--allow-production", is_flag=True,
              help="Do it even though DBKIT_ENV=production (refused there otherwise).")
@migrations_option
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def seed(users: int | None, posts: int | None, votes: int | None, seed_value: int | None,
         append: bool, sources: tuple[Path, ...], dry_run: bool, allow_production: bool,
         migrations: str | None, as_json: bool) -> None:
    """Load data as the DATABASE_URL role, in one transaction.

    When DBKIT_ENV=production the sample and synthetic data are refused (--allow-production
    to insist); files given with --from load as anywhere else.

    \b
    dbkit seed                                  the sample data shipped with dbkit (idempotent)
    dbkit seed --users 1000 --posts 100000 --votes 50000 --seed 7
    dbkit seed --from ./seed-data/              users/posts/votes .csv, .json or .jsonl
    """
    from dbkit.errors import ConfigError
    from dbkit.seed import commands as lib

    synthetic = any(v is not None for v in (users, posts, votes))
    if sources and synthetic:
        raise ConfigError("--from cannot be combined with --users/--posts/--votes",
                          hint="seed files and synthetic data in two runs")
    if not synthetic and (seed_value is not None or append):
        raise ConfigError("--seed and --append apply to synthetic data",
                          hint="add --users/--posts/--votes")
    target = settings(migrations=migrations).target()
    if synthetic:
        u, p, v = users or 0, posts or 0, votes or 0
        lib.check_counts(u, p, v)
        with _bar(u + p + v) as tick:
            result = lib.seed_synthetic(target, u, p, v, seed_value or 0, append=append,
                                        progress=tick, dry_run=dry_run,
                                        allow_production=allow_production)
    elif sources:
        from dbkit.seed.files import discover, estimate_rows

        found = discover(list(sources))
        with _bar(estimate_rows(found)) as tick:
            result = lib.seed_files(target, list(sources), progress=tick, dry_run=dry_run)
    else:
        result = lib.seed_sample(target, dry_run=dry_run, allow_production=allow_production)
    emit(result.as_dict(), as_json, render(result))


@contextlib.contextmanager
def _bar(total: int) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on standard error when it is a terminal; nothing otherwise."""
    if not total or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=total, label="seeding", file=sys.stderr,
                           show_pos=True, width=30) as bar:
        yield bar.update


def render(result: SeedResult) -> str:
    what = {"sample": "sample data", "synthetic": f"synthetic data (seed {result.seed})",
            "files": "files " + ", ".join(result.sources)}[result.mode]
    head = "dry run (rolled back): would seed" if result.dry_run else "seeded"
    lines = [f"{head} {what} into {result.database} as {result.role}"]
    if result.note:
        lines.append(result.note)
    for table, n in result.inserted.items():
        extra = f"  ({result.skipped[table]:,} already present)" if result.skipped.get(table) else ""
        lines.append(f"  {table:<6} {n:>12,}{extra}")
    lines.append(f"  total  {result.rows:>12,} rows in {result.seconds:.2f} s "
                 f"({result.rows_per_s:,.0f} rows/s)")
    return "\n".join(lines)
