""".env editing touches only the bytes it must: line endings, `export`, quoting, inline
comments and the final-newline state are kept; symlinks are followed; a dbkit key set twice is an
error; a no-op writes nothing; a file holding a password ends up private. Unit tests on real
files, then two end-to-end runs of `dbkit setup`."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from dbkit import envfile
from dbkit.errors import ConfigError
from dbkit.urls import DbURL

URL = "postgresql://app:s3cr%40t@127.0.0.1:5432/app_db?sslmode=disable"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def dotenv_pairs(path: Path) -> list[tuple[str | None, str | None]]:
    """What python-dotenv itself (not dbkit) reads, in order, duplicates and all."""
    from dotenv.parser import parse_stream

    with path.open(encoding="utf-8") as f:
        return [(b.key, b.value) for b in parse_stream(f) if b.key is not None]


# -- rewriting one line: every other byte stays ---------------------------------------------
def test_crlf_file_keeps_every_byte_but_the_value(tmp_path):
    path = tmp_path / ".env"
    before = (b"# settings\r\n"
              b"export FOO=\"bar\"\r\n"
              b"\r\n"
              b"export DATABASE_URL=postgresql://app@h/db   # dbkit writes the password\r\n"
              b"  LAST='x' # end")
    path.write_bytes(before)
    assert envfile.update(path, "DATABASE_URL", URL) is True
    assert path.read_bytes() == before.replace(b"postgresql://app@h/db", URL.encode())
    assert envfile.read(path) == {"FOO": "bar", "DATABASE_URL": URL, "LAST": "x"}


@pytest.mark.parametrize("line, value, expected", [
    # quoting style kept
    ("K=old", "new", "K=new"),
    ("K='old'", "new", "K='new'"),
    ('K="old"', "new", 'K="new"'),
    ("export K='old'", URL, f"export K='{URL}'"),
    ("export   K = 'old'   # note", "n e w", "export   K = 'n e w'   # note"),
    ("K=\"old\" # note", 'say "hi" \\ $HOME', 'K="say \\"hi\\" \\\\ $HOME" # note'),
    ("'K'=old", "new", "'K'=new"),
    ("K=old  #  note", "new", "K=new  #  note"),
    ("K=", "new", "K=new"),
    ("K= # note", "new", "K= new # note"),
    ("K=#notacomment", "new", "K=new"),
    ("K='multi\nline'", "new", "K='new'"),
    ("K", "new", "K=new"),
    ("K # note", "new", "K=new # note"),
    ("K#note", "new", "K=new #note"),
    # the old style cannot hold the value: the safe one instead, comment kept
    ("K=old # note", "two words", "K='two words' # note"),
    ("K=old # note", "", "K= # note"),
    ("K='old' # note", "it's", "K=\"it's\" # note"),
    ("K='old'", "ends\\", 'K="ends\\\\"'),
    ("K=old", "a # b", "K='a # b'"),
    ("K=old", "#x", "K='#x'"),
    ("K=old", "$(HOME)x", "K=$(HOME)x"),  # $ alone is no expansion for python-dotenv
    ("K=old", "line\nbreak", 'K="line\\nbreak"'),
])
@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_rewritten_line_keeps_its_shape(tmp_path, line, value, expected, ending):
    path = tmp_path / ".env"
    head = f"# top{ending}A=1{ending}"
    tail = f"{ending}B='2' # b{ending}"
    path.write_bytes((head + line.replace("\n", ending) + tail).encode())
    assert envfile.update(path, "K", value) is True
    assert path.read_bytes() == (head + expected + tail).encode()
    assert envfile.read(path) == {"A": "1", "K": value, "B": "2"}


def test_last_line_without_final_newline_keeps_having_none(tmp_path):
    path = tmp_path / ".env"
    path.write_bytes(b"A=1\r\nDATABASE_URL='old'")
    envfile.update(path, "DATABASE_URL", URL)
    assert path.read_bytes() == f"A=1\r\nDATABASE_URL='{URL}'".encode()


@pytest.mark.parametrize("before, after", [
    ("", "K=v\n"),
    ("A=1\n", "A=1\nK=v\n"),
    ("A=1\r\nB=2\r\n", "A=1\r\nB=2\r\nK=v\r\n"),
    ("A=1\r\nB=2", "A=1\r\nB=2\r\nK=v"),  # no final newline before: none after
    ("# only a comment", "# only a comment\nK=v"),
    ("A=1\r\nB=2\r\nC=3\nD=4", "A=1\r\nB=2\r\nC=3\nD=4\r\nK=v"),  # the dominant ending
    ("A=1\nB=2\nC=3\r\n", "A=1\nB=2\nC=3\r\nK=v\n"),
    ("A='open\n", "A='open\nK=v\n"),  # after a line python-dotenv cannot parse
])
def test_appended_line(tmp_path, before, after):
    path = tmp_path / ".env"
    path.write_bytes(before.encode())
    assert envfile.update(path, "K", "v") is True
    assert path.read_bytes() == after.encode()


@pytest.mark.parametrize("value, line", [
    (URL, f"K={URL}"),  # a percent-encoded URL: bare, for Docker --env-file and cut alike
    ("a-Z_0.9~+%:/@?=&,;!*$()[]", "K=a-Z_0.9~+%:/@?=&,;!*$()[]"),
    ("", "K="),
    ("two words", "K='two words'"),
    ("a#b", "K='a#b'"),
    ("tab\there", "K='tab\there'"),
    ("{}", "K='{}'"),
    ('say "x"', "K='say \"x\"'"),
    ("back\\slash", "K='back\\slash'"),
    ("it's", 'K="it\'s"'),
    ("a\\\\b", 'K="a\\\\\\\\b"'),  # \\ inside single quotes would read back as one \
    ("é", "K='é'"),
])
def test_new_line_quoting(tmp_path, value, line):
    path = tmp_path / ".env"
    envfile.update(path, "K", value)
    assert path.read_text(encoding="utf-8") == line + "\n"
    assert envfile.read(path) == {"K": value}


# -- whatever is written reads back exactly ------------------------------------------------
values = st.text(alphabet=st.sampled_from(list("aZ09%:/@._~+-?=&,;!*$()[]{}'\"\\# \t\n\ré")),
                 max_size=20)
# (the K line before its inline comment, the comment); None: no K line, so one is appended
shapes = [("K=old", ""), ("K='old'", ""), ('K="old"', ""), ("export K=old", " # c"),
          ("export K='old'", " #c"), ('K="o\nld"', "  # c"), ("K", ""), ("K", " # c"),
          ("K=", " # c"), ("K=", ""), None]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values, shape=st.sampled_from(shapes), ending=st.sampled_from(["\n", "\r\n"]),
       final_newline=st.booleans())
@example(value="${HOME}", shape=("K=old", ""), ending="\n", final_newline=True)
@example(value="it's", shape=("export K='old'", " #c"), ending="\r\n", final_newline=False)
def test_any_value_reads_back_and_nothing_else_moves(tmp_path, value, shape, ending, final_newline):
    path = tmp_path / ".env"
    head = f"# c 'x' \"y\"{ending}export A='it\\'s'{ending}"
    tail = f"{ending}Z=\"z\" # z" + (ending if final_newline else "")
    core, comment = shape or ("", "")
    before = head + core.replace("\n", ending) + comment + tail if shape else head + tail[len(ending):]
    path.write_bytes(before.encode())
    others = [p for p in dotenv_pairs(path) if p[0] != "K"]
    if "${" in value and "}" in value.split("${", 1)[1]:
        # python-dotenv would expand it: refused, file untouched, value not in the message
        with pytest.raises(ConfigError) as err:
            envfile.update(path, "K", value)
        assert value not in str(err.value) and path.read_bytes() == before.encode()
        return
    already = ("K", value) in dotenv_pairs(path)
    assert envfile.update(path, "K", value) is not already
    after = path.read_bytes().decode()
    assert envfile.read(path)["K"] == value
    if already:
        assert after == before
        return
    assert [p for p in dotenv_pairs(path) if p[0] != "K"] == others
    assert after.startswith(head)  # every byte before the K line, and after it, is kept
    if shape:
        assert after.endswith(comment.lstrip() + tail)
        assert after.count(ending) == before.count(ending) - core.count("\n")
        assert after.count("\n") == before.count("\n") - core.count("\n")  # no stray LF/CR
    else:
        assert after.startswith(before)
        assert after.count(ending) == before.count(ending) + 1
        assert after.endswith(ending) is final_newline


fragments = st.sampled_from(["K", "A", "export ", "=", "'", '"', "\\", "#", " ", "\t", "\n", "\r\n",
                             "\r", "x", "${A}", "'K'", "\ufeff"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(fragments, max_size=14).map("".join), value=values.filter(lambda v: "${" not in v))
def test_any_file_either_keeps_its_meaning_or_is_refused_untouched(tmp_path, text, value):
    """Whatever the file holds, the edit changes what python-dotenv reads for K and nothing
    else; when dbkit cannot find a safe edit it says so and leaves the file alone."""
    path = tmp_path / ".env"
    path.write_bytes(text.encode())
    before = dotenv_pairs(path)
    try:
        envfile.update(path, "K", value)
    except ConfigError as exc:
        # only when a broken line left a quote open that the new one would close
        assert "without changing how its other lines read" in str(exc)
        with path.open(encoding="utf-8") as f:
            from dotenv.parser import parse_stream

            assert any(b.error for b in parse_stream(f)) and set(value + text) & {"'", '"'}
        assert path.read_bytes() == text.encode()
        assume(False)
        return
    after = dotenv_pairs(path)
    assert envfile.read(path)["K"] == value
    last = max((i for i, (k, _) in enumerate(before) if k == "K"), default=None)
    expected = before + [("K", value)] if last is None else \
        before[:last] + [("K", value)] + before[last + 1:]
    assert after == expected


def test_the_parser_mirror_agrees_with_python_dotenv_on_tricky_files(tmp_path):
    """Refusing is safe but useless: on files a person writes, a safe edit is always found."""
    path = tmp_path / ".env"
    for text in ["K='a\\'b' # c\nK2=1", 'K="a\\"b\nc" # c\r\nA=1', "export\tK = x y  #c",
                 "\ufeffK=1", "A='unterminated\nK=old\nB=2", "K=1\rA=2\r", "#K=1\nK=2 # K=3"]:
        path.write_bytes(text.encode())
        envfile.update(path, "K", "new value")
        assert envfile.read(path)["K"] == "new value"
        assert path.read_bytes().decode().count("new value") == 1


# -- symlinks ---------------------------------------------------------------------------------
def test_symlinked_env_file_updates_its_target_in_place(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "app.env"
    target.write_text("A=1\nDATABASE_URL=old\n")
    project = tmp_path / "project"
    project.mkdir()
    link = project / ".env"
    link.symlink_to(Path("..") / "shared" / "app.env")  # relative, as people make them
    temp_dirs = []
    real_mkstemp = tempfile.mkstemp

    def recording_mkstemp(*args, **kwargs):
        temp_dirs.append(Path(kwargs["dir"]))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", recording_mkstemp)
    assert envfile.update(link, "DATABASE_URL", URL) is True
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "shared", "app.env")
    assert target.read_text() == f"A=1\nDATABASE_URL={URL}\n"
    assert mode(target) == 0o600
    assert temp_dirs == [shared]  # the rename stays within the target's filesystem
    assert sorted(p.name for p in project.iterdir()) == [".env"]
    assert sorted(p.name for p in shared.iterdir()) == ["app.env"]
    assert envfile.read(link)["DATABASE_URL"] == URL


def test_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / ".env"
    link.symlink_to(tmp_path / "real.env")
    assert envfile.update(link, "K", "v") is True
    assert link.is_symlink() and (tmp_path / "real.env").read_text() == "K=v\n"


def test_symlink_to_a_directory_is_not_a_regular_file(tmp_path):
    (tmp_path / "dir").mkdir()
    link = tmp_path / ".env"
    link.symlink_to(tmp_path / "dir")
    with pytest.raises(ConfigError, match="is not a regular file"):
        envfile.update(link, "K", "v")


# -- a dbkit key set twice ------------------------------------------------------------------
@pytest.mark.parametrize("key", ["DATABASE_URL", "DBKIT_APP_URL", "PGPASSWORD"])
def test_a_dbkit_key_set_twice_is_an_error_naming_both_lines(tmp_path, key):
    path = tmp_path / ".env"
    before = f"# mine\r\n{key}=one\r\n\r\n# {key}=commented out, does not count\r\nexport {key}='two'\r\n"
    path.write_bytes(before.encode())
    for call in (lambda: envfile.read(path), lambda: envfile.update(path, key, "three")):
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value) == f"{path} sets {key} on lines 2 and 5; only the last counts"
        assert err.value.exit_code == 3 and f"keep one {key} line" in err.value.hint
        assert "one" not in str(err.value) and "two" not in str(err.value)
    assert path.read_bytes() == before.encode()


def test_three_times_names_all_lines(tmp_path):
    path = tmp_path / ".env"
    path.write_text("DATABASE_URL=a\nDATABASE_URL=b\nX=1\nDATABASE_URL\n")
    with pytest.raises(ConfigError, match="on lines 1, 2 and 4;"):
        envfile.read(path)


def test_other_duplicate_keys_are_not_dbkit_business(tmp_path):
    path = tmp_path / ".env"
    path.write_text("FOO=1\nDATABASE_URL=x\nFOO=2\n")
    assert envfile.read(path) == {"FOO": "2", "DATABASE_URL": "x"}
    assert envfile.update(path, "FOO", "3") is True
    assert path.read_text() == "FOO=1\nDATABASE_URL=x\nFOO=3\n"  # the one that counts
    assert envfile.read(path)["FOO"] == "3"


# -- no-op, modes, protect ------------------------------------------------------------------
def test_same_value_writes_nothing_but_makes_the_file_private(tmp_path):
    path = tmp_path / ".env"
    path.write_text(f"# c\nDATABASE_URL='{URL}'\n")
    path.chmod(0o644)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    inode = path.stat().st_ino
    assert envfile.update(path, "DATABASE_URL", URL) is False
    assert path.stat().st_mtime_ns == 1_000_000_000 and path.stat().st_ino == inode
    assert mode(path) == 0o600
    assert path.read_text() == f"# c\nDATABASE_URL='{URL}'\n"


def test_written_file_is_private(tmp_path):
    path = tmp_path / ".env"
    path.write_text("A=1\n")
    path.chmod(0o644)
    assert envfile.update(path, "A", "2") is True
    assert mode(path) == 0o600


@pytest.mark.parametrize("content, mode_before, tightened", [
    (f"DATABASE_URL={URL}\n", 0o644, True),
    (f"X=1\nOTHER_URL='{URL}'\n", 0o640, True),  # any URL with a password
    ("SMTP_PASSWORD=hunter2\n", 0o604, True),
    ("db_password='x'\n", 0o644, True),
    ("DATABASE_URL=postgresql://app@h/db\n", 0o644, False),  # no password in it
    ("SMTP_PASSWORD=\n", 0o644, False),
    ("# DATABASE_URL=postgresql://a:b@h/d\n", 0o644, False),  # a comment is not a setting
    (f"DATABASE_URL={URL}\n", 0o600, False),
    (f"DATABASE_URL={URL}\n", 0o620, False),  # group may write, not read: not protect's call
])
def test_protect(tmp_path, caplog, content, mode_before, tightened):
    caplog.set_level(logging.INFO, logger="dbkit")
    path = tmp_path / ".env"
    path.write_text(content)
    path.chmod(mode_before)
    assert envfile.protect(path) is tightened
    assert mode(path) == (0o600 if tightened else mode_before)
    logged = [r.getMessage() for r in caplog.records if r.name == "dbkit"]
    assert bool([m for m in logged if "made it private" in m]) is tightened
    assert not [m for m in logged if "s3cr" in m or "hunter2" in m]


def test_protect_follows_symlinks_and_ignores_what_is_not_a_file(tmp_path):
    target = tmp_path / "real.env"
    target.write_text(f"DATABASE_URL={URL}\n")
    target.chmod(0o644)
    link = tmp_path / ".env"
    link.symlink_to(target)
    assert envfile.protect(link) is True
    assert mode(target) == 0o600 and link.is_symlink()
    assert envfile.protect(tmp_path / "missing") is False
    (tmp_path / "dir").mkdir()
    assert envfile.protect(tmp_path / "dir") is False


# -- errors and warnings --------------------------------------------------------------------
def test_errors_are_one_line_and_never_carry_the_value(tmp_path):
    path = tmp_path / ".env"
    path.write_bytes(b"A=\xff\n")
    with pytest.raises(ConfigError) as err:
        envfile.update(path, "DATABASE_URL", URL)
    assert "\n" not in str(err.value) and "s3cr" not in str(err.value)
    with pytest.raises(ConfigError, match="cannot read env file"):
        envfile.read(path)
    path.write_text("A=1\n")
    with pytest.raises(ConfigError) as err:
        envfile.update(path, "DATABASE_URL", "postgresql://u:${SECRET}@h/d")
    assert "SECRET" not in str(err.value) and "would expand" in str(err.value)
    assert path.read_text() == "A=1\n"


def test_an_unparsable_line_is_named_by_its_own_line_number(tmp_path, caplog):
    path = tmp_path / ".env"
    path.write_bytes(b"A=1\r\n\r\n\r\nB='open\r\nC=3\r\n")
    with caplog.at_level(logging.WARNING, logger="dbkit"):
        envfile.warn_unparsable(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:4: cannot parse this line; it is ignored"]


def test_a_directory_in_the_way_reads_as_empty_but_cannot_be_written(tmp_path):
    (tmp_path / ".env").mkdir()
    assert envfile.read(tmp_path / ".env") == {}
    with pytest.raises(ConfigError, match="is not a regular file"):
        envfile.check_writable(tmp_path / ".env")


# -- end to end: dbkit setup ------------------------------------------------------------------
def test_setup_writes_the_generated_password_touching_nothing_else(app):
    no_password = app.url.with_(password=None).render()
    template = ("# project settings\r\n"
                "export DATABASE_URL={url}   # dbkit fills in the password\r\n"
                "\r\n"
                "# unrelated\r\n"
                'export FOO="bar"')
    path = app.cwd / ".env"
    path.write_bytes(template.format(url=no_password).encode())
    r = app.cli("setup", "--no-seed", DATABASE_URL=None)
    assert r.code == 0, r.output
    after = path.read_bytes().decode()
    head, tail = template.split("{url}")
    assert after.startswith(head) and after.endswith(tail)
    written = after[len(head):len(after) - len(tail)]
    assert written == envfile.read(path)["DATABASE_URL"]  # bare, as it was: nothing else moved
    url = DbURL.parse(written)
    assert url.password and url.with_(password=None) == app.url.with_(password=None)
    assert url.password not in r.output
    assert mode(path) == 0o600
    app.password = url.password
    with app.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone() == (app.role,)


def test_setup_refuses_a_database_url_set_twice(app, admin_conn):
    path = app.cwd / ".env"
    path.write_text(f"# mine\nDATABASE_URL={app.url.render(reveal=True)}\nFOO=1\n\n"
                    f"DATABASE_URL={app.url.with_(password=None).render()}\n")
    r = app.cli("setup", "--no-seed", DATABASE_URL=None)
    assert r.code == 3, r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("dbkit: error:"), r.err
    assert "sets DATABASE_URL on lines 2 and 5; only the last counts" in lines[0]
    assert app.password not in r.output
    assert admin_conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s",
                              (app.role,)).fetchone() == (0,)
