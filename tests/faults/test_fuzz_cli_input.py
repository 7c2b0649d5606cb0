"""Bad-input fuzzing: names, URLs and .env contents. Every case ends in success or a clean,
documented error (one line, no traceback) — never exit 1 ("unexpected")."""

from __future__ import annotations

from urllib.parse import quote

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
                                 "\n", " ", "é", "db", "password=", "?password=", "&password=",
                                 "user=", "dbname=", "'", "\\", "%ff", "%c3", "%0a", "%00",
                                 "\t", "\x01", "\x7f", "a" * 64, "."])
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


# -- passwords in every form libpq takes, around hostile fields --------------------------------
# The password is a distinctive random token, placed where libpq reads a password (user:pw@,
# ?password=, password='...'), in a URL that is otherwise fine or has one hostile trait:
# whichever, the outcome is clean and the token never shows.
_DECOR = ["", " ", "'", "\\", "&", "=", "%", "+", "#", "@", "/", "?", ":", "é", "\n", "\x7f",
          "password=", "'a b\\' c'"]
_FORMS = ["userinfo", "parameter", "both", "different", "encoded key", "conninfo",
          "conninfo unquoted", "conninfo unterminated"]
# (field, value): a decoded value the field takes instead of its clean one
_HOSTILE_VALUES = [("host", "a" * 64), ("host", "b" * 63 + "." + "c" * 64), ("host", "h\nx"),
                   ("host", "h\x1f"), ("user", "u\n"), ("user", "u\x01"), ("user", "u\x7f"),
                   ("db", "d\x01"), ("db", "d\n"), ("port", "0"), ("port", "65536"),
                   ("port", "99999")]
# (field, text): inserted as is into the field's text: bad percent-escapes, raw control characters
_HOSTILE_TEXT = [(field, text) for field in ("user", "password", "host", "db", "query")
                 for text in ("%ff", "%c3%28", "%e2%82", "%00", "\n", "\t", "\x01", "\x7f")]


def _conninfo_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@st.composite
def password_urls(draw: st.DrawFn, host: str, port: int) -> tuple[str, str]:
    """(URL or key=value string, the token its password holds)."""
    token = "Tok" + draw(st.text(alphabet="0123456789abcdef", min_size=20, max_size=20))
    password = draw(st.sampled_from(_DECOR)) + token + draw(st.sampled_from(_DECOR))
    fields = {"user": draw(st.sampled_from(["u", "role x", "é"])),
              "host": draw(st.sampled_from([host, "localhost", "/nonexistent-socket-dir", "::1"])),
              "port": draw(st.sampled_from([str(port), "1", ""])),
              "db": draw(st.sampled_from(["db", "d b", "postgres"])),
              "query": draw(st.sampled_from(["", "sslmode=disable", "application_name=x"]))}
    form = draw(st.sampled_from(_FORMS))
    hostile = draw(st.sampled_from([None, None, None, "value", "text"]))
    raw: tuple[str, str] = ("", "")
    if hostile == "value":
        field_, value = draw(st.sampled_from(_HOSTILE_VALUES))
        fields[field_] = value
    elif hostile == "text":
        raw = draw(st.sampled_from(_HOSTILE_TEXT))
    if form.startswith("conninfo"):
        pairs = [(k, fields[k]) for k in ("host", "port", "user", "db") if fields[k]]
        pairs = [("dbname" if k == "db" else k, v + (raw[1] if raw[0] == k else ""))
                 for k, v in pairs]
        text = " ".join(f"{k}={_conninfo_value(v)}" for k, v in pairs)
        if fields["query"]:
            text += " " + fields["query"]
        pw = password + (raw[1] if raw[0] == "password" else "")
        if form == "conninfo":
            text += f" password={_conninfo_value(pw)}"
        elif form == "conninfo unquoted":  # libpq's backslash escapes, no quotes
            text += " password=" + pw.replace("\\", "\\\\").replace(" ", "\\ ")
        else:  # the quote never closes: the rest of the string is the password
            text += " password='" + pw
        return text + (raw[1] if raw[0] == "query" else ""), token
    h = fields["host"]
    pieces = {"user": quote(fields["user"], safe=""), "password": quote(password, safe=""),
              "db": quote(fields["db"], safe=""), "query": fields["query"],
              "host": "" if h.startswith("/") else f"[{h}]" if ":" in h else quote(h, safe="")}
    if raw[0]:
        pieces[raw[0]] += raw[1]
    query = [pieces["query"]] if pieces["query"] else []
    if h.startswith("/"):
        query.append("host=" + quote(h, safe="/"))
    auth = pieces["user"]
    if form in ("userinfo", "both", "different"):
        auth += ":" + pieces["password"]
    if form in ("parameter", "both"):
        query.append("password=" + pieces["password"])
    if form == "different":
        query.append("password=" + quote("other" + token[::-1], safe=""))
    if form == "encoded key":
        query.append("pass%77ord=" + pieces["password"])
    hostport = pieces["host"] + (f":{fields['port']}" if fields["port"] else "")
    text = f"postgresql://{auth}@{hostport}/{pieces['db']}"
    return text + ("?" + "&".join(query) if query else ""), token


def test_url_passwords(app, fault_scale):
    pg_host, pg_port = app.pg.host or "localhost", app.pg.port or 5432

    @fuzz_settings(fault_scale, 80)
    @given(case=password_urls(pg_host, pg_port))
    def check(case: tuple[str, str]) -> None:
        url, token = case
        # the password in the application's URL (a login as that role), and in the admin's
        for r in (app.cli("status", DATABASE_URL=url, DBKIT_CONNECT_TIMEOUT="1"),
                  app.cli("create", "--dry-run", DBKIT_ADMIN_URL=url,
                          DBKIT_CONNECT_TIMEOUT="1")):
            clean_outcome(r)
            assert r.code != 0  # the token is never the right password
            assert token not in r.output and token[::-1] not in r.output, r.output

    check()
