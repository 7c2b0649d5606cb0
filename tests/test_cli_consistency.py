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


# -- usage errors: dbkit's one line, exit 2 ------------------------------------------------
@pytest.mark.parametrize(("args", "said"), [
    (["migrate", "--nope"], "No such option '--nope'"),
    (["nope"], "No such command 'nope'"),
    (["seed", "--users", "x"], "Invalid value for '--users'"),
    (["migrate", "--parallel", "0"], "Invalid value for '--parallel'"),
    (["status", "extra"], "unexpected extra argument"),
    (["completion", "tcsh"], "'tcsh' is not one of 'bash', 'zsh', 'fish'"),
])
def test_usage_errors_are_one_line_with_exit_2(app, args: list[str], said: str):
    r = app.cli(*args)
    assert r.code == 2, r.output
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dbkit: error: ") and said in lines[0]
    assert "(hint: see 'dbkit" in lines[0] and r.out == ""


# -- shell completion --------------------------------------------------------------------
def test_bash_completion_completes_commands_and_options(app):
    import os
    import subprocess
    import sys

    bindir = Path(sys.executable).parent
    assert (bindir / "dbkit").exists()
    script = ('eval "$(dbkit completion bash)"; '
              'COMP_WORDS=(dbkit mig); COMP_CWORD=1; _dbkit_completion dbkit; echo "${COMPREPLY[@]}"; '
              'COMPREPLY=(); COMP_WORDS=(dbkit migrate --tar); COMP_CWORD=2; _dbkit_completion dbkit; '
              'echo "${COMPREPLY[@]}"')
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                         cwd=app.cwd, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["migrate", "--targets"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_call_back_into_dbkit(app, shell: str):
    r = app.cli("completion", shell)
    assert r.code == 0 and f"_DBKIT_COMPLETE={shell}_complete" in r.out.replace('"', "")


@pytest.mark.parametrize("args", [[], ["testdb"], ["server"]])
def test_a_group_alone_prints_its_help_not_an_error(app, args: list[str]):
    r = app.cli(*args)
    assert r.code == 2 and r.out.startswith("Usage: dbkit") and "Commands:" in r.out
    assert "dbkit: error" not in r.output
