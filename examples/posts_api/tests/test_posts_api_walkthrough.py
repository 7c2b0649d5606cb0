"""The README walkthrough ("Use it from your app", and the example's own "Run it"), run as
written in a temporary directory laid out like the repository: `dbkit setup --app-role
posts_app`, uvicorn on a free port instead of 8000, then every curl line, with the API
connected as the app role. The install line is not run: this test's environment is that
install (the wheel's install is tested on its own)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from dbkit.urls import DbURL

EXAMPLE = Path(__file__).resolve().parent.parent
REPO = EXAMPLE.parent.parent
INSTALL = ("python3 -m venv .venv && . .venv/bin/activate && "
           "pip install . -r examples/posts_api/requirements.txt")


def shell_blocks(readme: Path, heading: str) -> list[list[str]]:
    text = readme.read_text()
    section = text.split(heading + "\n", 1)[1].split("\n#", 1)[0]
    return [block.splitlines() for block in re.findall(r"```sh\n(.+?)\n```", section, re.S)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bash(script: str, cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(["bash", "-ec", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, (script, proc.stdout, proc.stderr)
    return proc.stdout


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A directory the server's OS user may enter, with the app where the README has it."""
    os.chmod(tmp_path, 0o755)
    shutil.copytree(EXAMPLE / "posts_api", tmp_path / "examples" / "posts_api" / "posts_api",
                    ignore=shutil.ignore_patterns("__pycache__"))
    yield tmp_path


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(posts_api_admin: str, workdir: Path):
    main = shell_blocks(REPO / "README.md", "### Use it from your app")
    own = shell_blocks(EXAMPLE / "README.md", "## Run it")
    assert main[0] == own[0], "the two READMEs walk the same way"
    install, cd, setup, serve = main[0]
    assert install == INSTALL
    assert (cd, setup) == ("cd examples/posts_api", "dbkit setup --app-role posts_app")
    assert serve == "uvicorn posts_api.main:app --port 8000"
    curls = main[1] + own[1]
    assert curls and all(line.startswith("curl ") for line in curls)

    # what an activated venv gives: this interpreter's dbkit and uvicorn first on PATH
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DBKIT_", "PG")) and k != "DATABASE_URL"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DBKIT_ADMIN_URL"] = posts_api_admin
    admin = DbURL.parse(posts_api_admin)
    if os.environ.get("DBKIT_TEST_ADMIN_URL"):
        # a shared server may hold someone's own 'posts': use names of this test's own
        name = f"posts_walk_{os.getpid()}"
        env["DATABASE_URL"] = DbURL(user=name, host=admin.host, port=admin.port,
                                    dbname=name).render(reveal=True)
    app_dir = workdir / "examples" / "posts_api"
    out = bash(f"{cd}\n{setup}", workdir, env)
    assert "DBKIT_APP_URL=postgresql://posts_app:***@" in out, out
    dbname = DbURL.parse(env.get("DATABASE_URL", "postgresql:///posts")).dbname
    port = free_port()
    server = subprocess.Popen(["bash", "-ec", f"{cd}\nexec {serve.replace('8000', str(port))}"],
                              cwd=workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        answers = []
        deadline = time.monotonic() + 60
        for line in curls:
            line = line.replace("localhost:8000", f"localhost:{port}")
            while True:  # the first request waits for uvicorn to listen
                proc = subprocess.run(["bash", "-c", line], cwd=app_dir, env=env,
                                      capture_output=True, text=True, timeout=30)
                if proc.returncode != 7 or time.monotonic() > deadline:  # 7: not listening
                    break
                assert server.poll() is None, server.communicate()[0]
                time.sleep(0.2)
            assert proc.returncode == 0, (line, proc.stderr)
            answers.append(json.loads(proc.stdout))
        with psycopg.connect(posts_api_admin) as conn:
            users = {r[0] for r in conn.execute(
                "SELECT usename FROM pg_stat_activity WHERE datname = %s", (dbname,))}
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
        bash("dbkit drop --yes --force", app_dir, env)  # the role(s) and database again
    assert users == {"posts_app"}, log  # the API's pool, as the app role only
    newest, signed_up, posted, voted, listed = answers
    assert len(newest) == 1 and newest[0]["id"] == 10  # the newest sample post
    assert signed_up["email"] == "ada@example.com" and "password" not in json.dumps(signed_up)
    assert posted["id"] == 11 and posted["owner_id"] == signed_up["id"]
    assert voted == {"post_id": 11, "user_id": signed_up["id"]}
    assert [(p["id"], p["votes"]) for p in listed][0] == (11, 1)
    assert [p["title"] for p in listed] == ["Hello from the API", "Hello, world"]
    assert "Application startup complete" in log
