"""The same option means the same thing on every command: a walk over the click command tree,
and each command that reads migrations shown to read the directory it was given."""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from dbkit.cli.common import COMMANDS, cli
from dbkit.migrate.files import packaged_dir

# Commands whose work depends on the migration files, and commands that provision roles.
READS_MIGRATIONS = {"migrate", "rollback", "status", "verify", "new", "setup", "reset", "seed",
                    "doctor", "lint", "testdb create"}
PROVISIONS = {"create", "drop", "setup", "reset"}


def _commands() -> Iterator[tuple[str, click.Command]]:
    for module in sorted({m for m, _ in COMMANDS.values()}):
        importlib.import_module(module)

    def walk(cmd: click.Command, path: list[str]) -> Iterator[tuple[str, click.Command]]:
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), cmd
    yield from walk(cli, [])


def _options(cmd: click.Command) -> dict[str, click.Parameter]:
    return {o: p for p in cmd.params for o in p.opts}


def test_every_command_that_reads_migrations_takes_migrations_and_provisioners_take_app_role():
    seen = dict(_commands())
    assert READS_MIGRATIONS | PROVISIONS <= set(seen)  # the lists name real commands
    for name, cmd in seen.items():
        opts = _options(cmd)
        if name in READS_MIGRATIONS:
            assert "--migrations" in opts, f"dbkit {name} has no --migrations"
            assert opts["--migrations"].help == _options(seen["migrate"])["--migrations"].help
        if name in PROVISIONS:
            assert "--app-role" in opts, f"dbkit {name} has no --app-role"


@pytest.fixture
def extra_migrations(tmp_path: Path) -> Path:
    """The posts migrations plus one of our own, so a command that read them can be told."""
    d = tmp_path / "mig"
    shutil.copytree(packaged_dir(), d)
    (d / "0900_extra.sql").write_text("CREATE TABLE extra_marker (id int);\n")
    (d / "0900_extra.rollback.sql").write_text("DROP TABLE extra_marker;\n")
    return d


def _has_marker(url) -> bool:  # noqa: ANN001
    import psycopg

    with psycopg.connect(**url.connect_kwargs()) as conn:
        return conn.execute("SELECT to_regclass('extra_marker')").fetchone()[0] is not None


def test_seed_doctor_reset_testdb_and_lint_read_the_directory_given(app, extra_migrations):
    mig = str(extra_migrations)
    assert app.cli("setup", "--no-seed").code == 0  # the packaged migrations: 0900 is not there
    refused = app.cli("seed", "--migrations", mig)  # seed needs the schema up to date with mig
    assert refused.code == 13 and "0900_extra" in refused.err, refused.output
    r = app.cli("doctor", "--migrations", mig, "--json")
    checks = {c["name"]: c for c in json.loads(r.out)["checks"]}
    assert "0900_extra" in checks["pending-migrations"]["detail"]
    r = app.cli("reset", "--yes", "--no-seed", "--migrations", mig)
    assert r.code == 0, r.output
    assert _has_marker(app.url)
    assert app.cli("seed", "--migrations", mig).code == 0
    r = app.cli("testdb", "create", "--migrations", mig, "--prefix", f"{app.db}_t", "--reveal",
                "--json")
    assert r.code == 0, r.output
    from dbkit.urls import DbURL

    clone = DbURL.parse(json.loads(r.out)["urls"][0])
    app.extra_dbs.append(str(clone.dbname))
    assert _has_marker(clone)
    assert app.cli("testdb", "drop", "--prefix", f"{app.db}_t").code == 0
    (extra_migrations / "0901_bad.sql").write_text(
        "ALTER TABLE posts ALTER COLUMN title TYPE int USING 0;\n")
    r = app.cli("lint", "--migrations", mig)
    assert r.code == 12 and "0901_bad.sql" in r.output, r.output
    assert app.cli("lint").code == 0  # the packaged ones are clean
