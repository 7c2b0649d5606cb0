"""Settings precedence, .env handling and URL parsing (pure Python, no server needed)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dbkit.envfile import read as read_env_file
from dbkit.envfile import update as update_env_file
from dbkit.errors import ConfigError, InvalidURL
from dbkit.settings import Settings
from dbkit.urls import DbURL, mask_url


def test_precedence_flags_env_dotenv_defaults(tmp_path):
    (tmp_path / ".env").write_text("DBKIT_ENV=test\nDBKIT_LOCK_TIMEOUT=9s\nDBKIT_DATA_DIR=/x\n"
                                   "DATABASE_URL=postgresql://file@h/db\n")
    env = {"DBKIT_LOCK_TIMEOUT": "7s", "DATABASE_URL": "postgresql://env@h/db"}
    s = Settings.load(flags={"lock_timeout": "1s", "database_url": None}, environ=env, cwd=tmp_path)
    assert s.lock_timeout_ms == 1000  # flag beats env and file
    assert s.database_url == DbURL.parse("postgresql://env@h/db")  # env beats file
    assert s.env == "test" and s.data_dir == Path("/x")  # file beats default
    assert s.statement_timeout_ms == 0  # default
    assert Settings.load(environ={}, cwd=tmp_path).lock_timeout_ms == 9000


def test_explicit_env_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(environ={}, env_file=tmp_path / "nope.env", cwd=tmp_path)
    assert Settings.load(environ={}, cwd=tmp_path).database_url is None  # ./.env is optional


def test_invalid_values_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="DBKIT_ENV"):
        Settings.load(environ={"DBKIT_ENV": "prod"}, cwd=tmp_path)
    with pytest.raises(InvalidURL, match="DATABASE_URL"):
        Settings.load(environ={"DATABASE_URL": "http://x/y"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="not set"):
        Settings.load(environ={}, cwd=tmp_path).target()


def test_pg_variables_are_collected_from_env_and_file(tmp_path):
    (tmp_path / ".env").write_text("PGHOST=filehost\nPGPORT=1\n")
    s = Settings.load(environ={"PGPORT": "2"}, cwd=tmp_path)
    assert s.pg_env == {"PGHOST": "filehost", "PGPORT": "2"}


def test_update_env_file_keeps_lines_and_is_private(tmp_path):
    path = tmp_path / ".env"
    path.write_text("# comment\nexport A=1\nDATABASE_URL=old\nB='two'")
    path.chmod(0o644)
    update_env_file(path, "DATABASE_URL", "postgresql://u:p%40@h/d")
    update_env_file(path, "NEW", "v")
    # the unquoted line stays unquoted; the file had no final newline and still has none
    assert path.read_text() == ("# comment\nexport A=1\nDATABASE_URL=postgresql://u:p%40@h/d\n"
                                "B='two'\nNEW=v")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_env_file(path)["DATABASE_URL"] == "postgresql://u:p%40@h/d"
    assert not list(tmp_path.glob(".env.*.tmp"))


@pytest.mark.parametrize("url,expected", [
    ("postgresql://u:pw@h:5433/db", dict(user="u", password="pw", host="h", port=5433, dbname="db")),
    ("postgres://u@h/db", dict(user="u", password=None, host="h", port=None, dbname="db")),
    ("postgresql+psycopg://a%20b:p%2Fw@h/d%22b", dict(user="a b", password="p/w", dbname='d"b')),
    ("postgresql://u@/db?host=/run/pg&port=6000", dict(host="/run/pg", port=6000)),
    ("postgresql://u@[::1]:6/db", dict(host="::1", port=6)),
])
def test_parse(url, expected):
    parsed = DbURL.parse(url)
    for key, value in expected.items():
        assert getattr(parsed, key) == value


@pytest.mark.parametrize("bad", ["mysql://u@h/db", "postgresql://u@h:99999/db",
                                 "postgresql://u:pw@h/a/b", "postgresql://u@h/db#frag", "nonsense"])
def test_parse_rejects(bad):
    with pytest.raises(InvalidURL):
        DbURL.parse(bad)


def test_render_round_trips_and_masks():
    url = DbURL(user="ü s'er", password="p@ss:/w", host="h", port=1, dbname="d b",
                params=(("sslmode", "require"),))
    assert DbURL.parse(url.render(reveal=True)) == url
    assert "p@ss" not in str(url) and ":***@" in str(url)
    assert "secret" not in mask_url("postgresql://u:secret@h/db")
    assert mask_url("garbage://") == "<invalid URL>"


def test_every_variable_is_documented_in_readme_and_env_example():
    from dbkit.settings import VARIABLES

    root = Path(__file__).resolve().parent.parent
    readme, example = (root / "README.md").read_text(), (root / ".env.example").read_text()
    missing = [v.name for v in VARIABLES if f"`{v.name}`" not in readme or v.name not in example]
    assert missing == []


@pytest.mark.parametrize("value,ms", [("5s", 5000), ("500ms", 500), ("2min", 120_000),
                                      ("1h", 3_600_000), ("1", 1000), ("1.5", 1500), ("0", 0),
                                      (" 3 s ", 3000)])
def test_one_duration_parser(value, ms, tmp_path):
    s = Settings.load(environ={"DBKIT_LOCK_TIMEOUT": value, "DBKIT_STATEMENT_TIMEOUT": value},
                      cwd=tmp_path)
    assert (s.lock_timeout_ms, s.statement_timeout_ms) == (ms, ms)


@pytest.mark.parametrize("var", ["DBKIT_LOCK_TIMEOUT", "DBKIT_STATEMENT_TIMEOUT",
                                 "DBKIT_CONNECT_TIMEOUT"])
@pytest.mark.parametrize("value", ["abc", "-1s", "5 seconds", "1e3", "999999999s"])
def test_bad_durations_name_their_variable(var, value, tmp_path):
    with pytest.raises(ConfigError) as err:
        Settings.load(environ={var: value}, cwd=tmp_path)
    assert err.value.exit_code == 3 and err.value.message.startswith(var)


def test_connect_timeout_must_leave_some_time(tmp_path):
    with pytest.raises(ConfigError, match="DBKIT_CONNECT_TIMEOUT must be more than 0"):
        Settings.load(environ={"DBKIT_CONNECT_TIMEOUT": "0"}, cwd=tmp_path)
    assert Settings.load(environ={"DBKIT_CONNECT_TIMEOUT": "1500ms"},
                         cwd=tmp_path).connect_timeout_s == 2  # libpq takes whole seconds


def test_settings_are_typed_once(tmp_path):
    s = Settings.load(environ={"DATABASE_URL": "postgresql://u:p@h:1/d", "DBKIT_DATA_DIR": "data",
                               "DBKIT_MIGRATIONS": "m", "DBKIT_PG_BIN": "/opt/pg/bin"},
                      cwd=tmp_path)
    assert isinstance(s.database_url, DbURL) and s.database_url.port == 1
    assert s.data_dir == tmp_path / "data" and s.migrations == tmp_path / "m"
    assert s.pg_bin == Path("/opt/pg/bin")


@pytest.mark.parametrize("key", ["PGHOST", "PGUSER", "PGDATABASE"])
def test_a_control_character_in_a_libpq_variable_is_a_config_error(tmp_path, key):
    from dbkit.errors import ConfigError
    from dbkit.settings import Settings

    with pytest.raises(ConfigError, match=key):
        Settings.load(environ={key: "db\nother"}, cwd=tmp_path)
