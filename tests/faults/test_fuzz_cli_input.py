"""Bad-input fuzzing: names, URLs and .env contents. Every case ends in success or a clean,
documented error (one line, no traceback) — never exit 1 ("unexpected")."""

from __future__ import annotations

import pytest
from cluster import drop_everything
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbkit.errors import EXIT_CODES

pytestmark = pytest.mark.faults
DOCUMENTED = {code for code, _ in EXIT_CODES} - {1}

names = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=70)


def clean_outcome(result) -> None:
    assert "Traceback" not in result.output
    assert result.code in DOCUMENTED | {0}, result.output
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    # warnings (e.g. an unparsable .env line, named file:line) come one line each, before
    warnings = [ln for ln in lines if ln.startswith("dbkit: warning: ")]
    if result.code:
        assert lines[len(warnings):] == lines[-1:] and lines[-1].startswith("dbkit: error:"), \
            result.err
    else:
        assert lines == warnings, result.err


def fuzz_settings(fault_scale: int, base: int) -> settings:
    return settings(max_examples=base * fault_scale, deadline=None, derandomize=fault_scale == 1,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def test_names(app, admin_conn, fault_scale):
    @fuzz_settings(fault_scale, 25)
    @given(role=names, db=names)
    def check(role: str, db: str) -> None:
        url = app.url.with_(user=role or None, dbname=db or None)
        r = app.cli("create", DATABASE_URL=url.render(reveal=True))
        try:
            clean_outcome(r)
            if r.code == 0:  # created literally, exactly these names
                row = admin_conn.execute(
                    "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                    (db,)).fetchone()
                assert row == (role,)
            elif "\x00" not in db and db not in ("postgres", "template0", "template1"):
                assert admin_conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                                          (db,)).fetchone()[0] == 0  # nothing half-made
        finally:
            if r.code == 0:
                drop_everything(app.pg, [db], [role])

    check()


def test_urls(app, fault_scale):
    fragments = st.sampled_from(["postgresql://", "postgres://", "mysql://", "u", ":", "@", "/",
                                 "?", "&", "=", "%", "%zz", "#", "[", "]", "::1", "127.0.0.1",
                                 ":0", ":99999", ":5432", "host=", "port=x", "sslmode=bogus",
                                 "\n", " ", "é", "db"])
    # an environment variable cannot hold NUL; .env contents (below) can
    urls = st.one_of(names, st.lists(fragments, max_size=12).map("".join)).filter(
        lambda u: "\x00" not in u)

    @fuzz_settings(fault_scale, 60)
    @given(url=urls)
    def check(url: str) -> None:
        r = app.cli("create", "--dry-run", DATABASE_URL=url or None,
                    DBKIT_CONNECT_TIMEOUT="1")
        clean_outcome(r)

    check()


def test_env_file_contents(app, fault_scale):
    lines = st.one_of(names, st.sampled_from([
        "DATABASE_URL=", "DATABASE_URL='unterminated", 'DATABASE_URL="x', "export =", "=",
        "DBKIT_ENV=prod", "DBKIT_CONNECT_TIMEOUT=-1", "DBKIT_CONNECT_TIMEOUT=abc", "\\", "#",
        "DBKIT_ADMIN_URL=postgresql://[", "PGPORT=notaport", "\ufeffDATABASE_URL=x"]))

    @fuzz_settings(fault_scale, 40)
    @given(content=st.lists(lines, max_size=6).map("\n".join))
    def check(content: str) -> None:
        (app.cwd / ".env").write_text(content)
        r = app.cli("create", "--dry-run", DATABASE_URL=None, DBKIT_ADMIN_URL=None,
                    DBKIT_CONNECT_TIMEOUT=None, **{"PGCONNECT_TIMEOUT": "1"})
        clean_outcome(r)

    try:
        check()
    finally:
        (app.cwd / ".env").unlink(missing_ok=True)
