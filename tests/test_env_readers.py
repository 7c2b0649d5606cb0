"""The ``.env`` dbkit writes, read the way other tools read it: Docker's ``--env-file`` and
``cut -d= -f2-`` take ``KEY=VALUE`` literally (quotes stay part of the value), so every value
dbkit writes must be one psql accepts as it stands."""

from __future__ import annotations

import os
import subprocess

from dbkit.server import find_pg_bin


def _literal(text: str) -> dict[str, str]:
    """Docker's --env-file rules: KEY=VALUE per line, '#' lines skipped, nothing unquoted."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value
    return out


def _psql(conninfo_env: dict[str, str], url: str) -> subprocess.CompletedProcess[str]:
    # The URL is psql's argument here: exactly what `psql "$DATABASE_URL"` does in a shell.
    return subprocess.run([str(find_pg_bin() / "psql"), "-X", "-At", url, "-c", "SELECT 1"],
                          capture_output=True, text=True, env=conninfo_env, timeout=60)


def test_env_values_written_by_setup_work_when_read_literally(app):
    app.password = None  # dbkit generates the passwords and writes both URLs to .env
    r = app.cli("setup", "--no-seed", "--app-role", f"{app.role}_app")
    app.extra_roles.append(f"{app.role}_app")
    assert r.code == 0, r.output
    written = _literal((app.cwd / ".env").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key in ("DATABASE_URL", "DBKIT_APP_URL"):
        value = written[key]
        assert not value.startswith(("'", '"')), f"{key} is quoted: {value[:12]}…"
        proc = _psql(env, value)
        assert proc.returncode == 0 and proc.stdout.strip() == "1", (key, proc.stderr)
