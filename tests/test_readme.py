"""README's two commands stay true: the test command is what CI runs, and the run command works
literally on a copy of the repository (non-editable install, nothing configured)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from dbkit.server import LocalServer

REPO = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_ci_runs_the_readme_test_command():
    run_cmd, test_cmd = readme_commands()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci
    assert "pytest" in test_cmd and "dbkit setup" in run_cmd
    assert "ruff check" in test_cmd and "basedpyright" in test_cmd  # the checks gate CI too


def test_readme_run_command_on_a_fresh_copy():
    run_cmd, _ = readme_commands()
    work = Path(tempfile.mkdtemp(prefix="dbkit-readme-"))
    os.chmod(work, 0o755)
    copy = work / "dbkit"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src, dst = REPO / f, copy / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        elif src.exists():
            shutil.copy2(src, dst)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DBKIT_", "PG", "VIRTUAL_ENV")) and k != "DATABASE_URL"}
    try:
        proc = subprocess.run(run_cmd, shell=True, cwd=copy, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "DATABASE_URL=postgresql://" in proc.stdout
        # installed (not editable) dbkit works from any directory, with the packaged migrations
        elsewhere = work / "elsewhere"
        elsewhere.mkdir()
        st = subprocess.run([str(copy / ".venv/bin/dbkit"), "--env-file", str(copy / ".env"),
                             "status", "--check"], cwd=elsewhere, env=env, capture_output=True,
                            text=True, timeout=120)
        assert st.returncode == 0, st.stdout + st.stderr
    finally:
        LocalServer(copy / ".dbkit").destroy()
        shutil.rmtree(work, ignore_errors=True)


def test_readme_lists_every_exit_code():
    from dbkit.errors import EXIT_CODES

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    listed = {int(m) for m in re.findall(r"^\| (\d+) \|", readme, flags=re.M)}
    assert listed == {code for code, _ in EXIT_CODES}


def test_the_github_actions_example_runs_its_dbkit_steps(app, admin_conn):
    """docs/github-actions.yml: its dbkit steps, with its env block, against a real server (the
    service container's address swapped for the test server's; unique names instead of
    'posts' so that parallel test runs cannot collide)."""
    from helpers import clean_env

    from dbkit.urls import DbURL

    workflow = (REPO / "docs" / "github-actions.yml").read_text()
    env = dict(re.findall(r"^      (\w+): (\S+)$", workflow, flags=re.M))
    assert set(env) == {"DBKIT_ADMIN_URL", "DATABASE_URL", "DBKIT_ENV"}, env
    steps = re.findall(r"^\s+(?:- )?run: (dbkit .+?)\s*(?:#.*)?$", workflow, flags=re.M)
    assert steps == ["dbkit wait --timeout 60", "dbkit setup"], steps
    given = DbURL.parse(env["DATABASE_URL"])
    env["DBKIT_ADMIN_URL"] = app.pg.render(reveal=True)
    env["DATABASE_URL"] = given.with_(host=app.pg.host, port=app.pg.port, user=app.role,
                                      dbname=app.db).render(reveal=True)
    for step in steps:
        proc = subprocess.run([sys.executable, "-m", "dbkit", *step.split()[1:]], cwd=app.cwd,
                              env=clean_env(**env), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (step, proc.stderr)
        assert given.password not in proc.stdout + proc.stderr
    import psycopg

    with psycopg.connect(**DbURL.parse(env["DATABASE_URL"]).connect_kwargs()) as conn:
        assert conn.execute("SELECT count(*) FROM posts").fetchone()[0] == 10  # set up, seeded


# Where README's shell blocks live, and the test that runs each one as written.
RUN_BY = {
    "## Two commands": "test_readme.py (the run command on a fresh copy; the test command is "
                       "CI itself, checked by test_ci_runs_the_readme_test_command)",
    "### Use it from your app": "examples/posts_api/tests/test_posts_api_walkthrough.py",
}


def test_every_shell_block_in_the_readme_is_run_by_a_test():
    """A shell block added anywhere else in README would be one no test runs."""
    text = (REPO / "README.md").read_text()
    sections = re.split(r"(?m)^(?=#{2,3} )", text)
    for section in sections:
        blocks = re.findall(r"```(?:sh|bash|shell|console)\n", section)
        if blocks:
            heading = section.splitlines()[0]
            assert heading in RUN_BY, f"README section {heading!r} has a shell block no test runs"
    walkthrough = (REPO / "examples/posts_api/tests/test_posts_api_walkthrough.py").read_text()
    assert "### Use it from your app" in walkthrough  # that test reads this very section
