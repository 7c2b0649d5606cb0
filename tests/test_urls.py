"""URLs in every form libpq takes a password in, the one masking rule, and the hostile input
that is refused rather than silently changed (pure Python, no server needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dbkit.errors import InvalidURL
from dbkit.urls import DbURL, mask_secrets, mask_url

SECRET = "S3cr3t-Tok-5f1c9e"


# -- a password in any form is the password -------------------------------------------------
@pytest.mark.parametrize("text,password", [
    ("postgresql://u:S3cr3t-Tok-5f1c9e@h/db", SECRET),
    ("postgresql://u@h/db?password=S3cr3t-Tok-5f1c9e", SECRET),
    ("postgresql://u@h/db?sslmode=require&password=S3cr3t-Tok-5f1c9e", SECRET),
    ("postgresql://u@h/db?pass%77ord=a%20b%2Bc+d", "a b+c+d"),  # '+' is a plus, as for libpq
    ("postgresql://u:same@h/db?password=same", "same"),
    ("postgresql://u@h/db?password=", ""),
    ("host=h user=u password=S3cr3t-Tok-5f1c9e dbname=db", SECRET),
    ("host=h user=u password='a b\\' c' dbname=db", "a b' c"),
    ("  user = u  password = x\\ y host=h dbname=db\n", "x y"),
])
def test_the_password_is_taken_from_every_form(text, password):
    url = DbURL.parse(text)
    assert url.password == password
    assert (url.user, url.host, url.dbname) == ("u", "h", "db")
    assert all(k != "password" for k, _ in url.params)  # never rendered as a parameter
    assert DbURL.parse(url.render(reveal=True)) == url


def test_a_conninfo_string_maps_to_fields_and_params():
    url = DbURL.parse("host=/run/pg port=6000 user='r o' dbname=d sslmode=require "
                      "application_name=x password=p")
    # the rest, in libpq's order of its keywords
    assert url.with_(params=()) == DbURL(user="r o", password="p", host="/run/pg", port=6000,
                                         dbname="d")
    assert dict(url.params) == {"sslmode": "require", "application_name": "x"}
    assert DbURL.parse("host=h port=1 user=u dbname=d sslmode=require").render() == \
        "postgresql://u@h:1/d?sslmode=require"  # rendering stays a postgresql:// URL


def test_only_a_conninfo_string_imports_psycopg():
    """``dbkit --help`` and every URL stay off psycopg's import time."""
    code = ("import sys; from dbkit.urls import DbURL; "
            "DbURL.parse('postgresql://u:p@h/db?password=p'); a = 'psycopg' in sys.modules; "
            "DbURL.parse('host=h user=u'); print(a, 'psycopg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_two_different_passwords_are_refused_without_echoing_either():
    for text in ("postgresql://u:one-Tok@h/db?password=two-Tok",
                 "postgresql://u@h/db?password=one-Tok&password=two-Tok"):
        with pytest.raises(InvalidURL, match="two different passwords") as err:
            DbURL.parse(text)
        assert "Tok" not in err.value.message + err.value.hint


def test_a_password_given_without_a_user_is_rendered_too():
    url = DbURL.parse("host=h password=p dbname=d")
    assert url.render(reveal=True) == "postgresql://:p@h/d"
    assert DbURL.parse(url.render(reveal=True)) == url
    assert url.render() == "postgresql://:***@h/d"


# -- one masking rule -----------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "cannot connect to postgresql://u:S3cr3t-Tok-5f1c9e@h/db: refused",
    "postgresql://u:p@S3cr3t-Tok-5f1c9e@h/db",  # an unencoded '@' in the password
    "postgresql://:S3cr3t-Tok-5f1c9e@h/db",
    "postgresql://u@h/db?password=S3cr3t-Tok-5f1c9e",
    "postgresql://u@h/db?sslmode=require&password=S3cr3t-Tok-5f1c9e&x=1",
    "postgresql://u@h/db?pass%77ord=S3cr3t-Tok-5f1c9e",
    "postgresql://u@h/db?%50ASSWORD=S3cr3t-Tok-5f1c9e",
    "postgresql://u@h/db?next=postgresql://v:S3cr3t-Tok-5f1c9e@g/x",
    "host=h user=u password=S3cr3t-Tok-5f1c9e dbname=d",
    "host=h password = 'a b\\' S3cr3t-Tok-5f1c9e' dbname=d",
    "host=h password='never closed S3cr3t-Tok-5f1c9e",
    "host=h password=a\\ S3cr3t-Tok-5f1c9e",
    "options: password=\nS3cr3t-Tok-5f1c9e",
    "PGPASSWORD=S3cr3t-Tok-5f1c9e psql",
    "ALTER ROLE u PASSWORD 'it''s S3cr3t-Tok-5f1c9e'",  # SQL's own form, in a quoted query
])
def test_mask_secrets_hides_every_form(text):
    assert "Tok" not in mask_secrets(text)
    assert "***" in mask_secrets(text)


@pytest.mark.parametrize("text", [
    "postgresql://u@h:5432/db?application_name=x&sslmode=require",
    "postgresql://h:5432?port=1",
    "postgresql://u@[::1]:5432/db",
    "role u has no password_encryption=scram... wait",
    "the passwords differ",
])
def test_mask_secrets_leaves_text_without_passwords_alone(text):
    assert mask_secrets(text) == text


def test_render_masks_with_the_same_rule_and_mask_url_takes_every_form():
    by_hand = DbURL(user="u", host="h", dbname="d", params=(("password", SECRET),))
    assert SECRET not in by_hand.render() and "password=***" in by_hand.render()
    assert SECRET in by_hand.render(reveal=True)
    for text in (f"postgresql://u@h/d?password={SECRET}", f"user=u password={SECRET} host=h"):
        assert SECRET not in mask_url(text) and mask_url(text).startswith("postgresql://u:***@h")


# -- refused, not silently changed ----------------------------------------------------------
@pytest.mark.parametrize("text,needle", [
    ("postgresql://u:S3cr3t-Tok@" + "a" * 64 + ".example.com/db", "longer than 63 bytes"),
    ("host=" + "b" * 30 + "." + "c" * 64 + " password=S3cr3t-Tok", "longer than 63 bytes"),
    ("postgresql://u:S3cr3t-Tok@h:0/db", "1 to 65535"),
    ("postgresql://u:S3cr3t-Tok@h:65536/db", "1 to 65535"),
    ("postgresql://u:S3cr3t-Tok@/db?port=0", "1 to 65535"),
    ("host=h port=0 password=S3cr3t-Tok", "1 to 65535"),
    ("postgresql://u:S3cr3t-Tok@h/db?port=%2B5", "non-numeric port"),
    ("postgresql://u%ff:S3cr3t-Tok@h/db", "role name has percent-escapes that are not UTF-8"),
    ("postgresql://u:S3cr3t-Tok%ff@h/db", "password has percent-escapes that are not UTF-8"),
    ("postgresql://u@h/db?password=S3cr3t-Tok%c3%28", "password has percent-escapes"),
    ("postgresql://u:S3cr3t-Tok@h/d%e2%82", "database name has percent-escapes"),
    ("postgresql://u:S3cr3t-Tok@h%ff/db", "host has percent-escapes"),
    ("postgresql://u:S3cr3t-Tok@h/d\nb", "contains a newline"),
    ("postgresql://u:S3cr3t\n-Tok@h/db", "contains a newline"),
    ("postgresql://u:S3cr3t-Tok@h/db\x7f", "U+007F"),
    ("postgresql://u%0A:S3cr3t-Tok@h/db", "role name contains a newline"),
    ("postgresql://u:S3cr3t-Tok@h/d%01", "database name contains a control character (U+0001)"),
    ("postgresql://u:S3cr3t-Tok@h%1f/db", "host contains a control character"),
    ("postgresql://u:S3cr3t-Tok@/db?host=/tmp%0A", "host contains a newline"),
    ("user='u\x01' password=S3cr3t-Tok host=h", "role name contains a control character"),
    ("postgresql://u:S3cr3t-Tok%00@h/db", "NUL"),
    ("host=h password='S3cr3t-Tok", "a quoted value is not closed"),
    ("host=h password=S3cr3t -Tok", "a word without '='"),
    ("host=h S3cr3t-Tok=x", "an unknown keyword"),
    ("postgresql://u:S3cr3t-Tok@h/db\udcff", "not UTF-8"),
])
def test_hostile_urls_are_refused_in_one_line_without_the_password(text, needle):
    with pytest.raises(InvalidURL) as err:
        DbURL.parse(text, "DATABASE_URL")
    assert err.value.exit_code == 3
    shown = f"{err.value.message} (hint: {err.value.hint})"
    assert needle in shown and "\n" not in shown
    assert "Tok" not in shown and "S3cr3t" not in shown


def test_a_unix_socket_directory_is_not_a_dns_name():
    long_dir = "/" + "d" * 100 + "/run"
    assert DbURL.parse(f"postgresql://u@/db?host={long_dir}").host == long_dir
    assert DbURL.parse(f"host={long_dir} user=u").host == long_dir
    assert DbURL.parse("postgresql://u@" + "a" * 63 + ".example.com/db").host


# -- multi-host (HA) URLs: libpq's own format ----------------------------------------------
@pytest.mark.parametrize("text,hosts", [
    ("postgresql://u:S3cr3t-Tok-5f1c9e@h1:5432,h2:5433/db?target_session_attrs=read-write",
     (("h1", 5432), ("h2", 5433))),
    ("postgresql://u:S3cr3t-Tok-5f1c9e@h1,h2:5433,h3/db", (("h1", None), ("h2", 5433),
                                                          ("h3", None))),
    ("postgres://u:S3cr3t-Tok-5f1c9e@[::1]:5,h2:6/db", (("::1", 5), ("h2", 6))),
    ("postgresql://u:S3cr3t-Tok-5f1c9e@/db?host=/run/a,/run/b&port=7", (("/run/a", 7),
                                                                      ("/run/b", 7))),
    ("host=h1,h2 port=1,2 user=u password=S3cr3t-Tok-5f1c9e dbname=db", (("h1", 1), ("h2", 2))),
])
def test_a_multi_host_url_keeps_every_host_in_order_and_its_password_masked(text, hosts):
    url = DbURL.parse(text)
    assert url.hosts == hosts and url.password == SECRET and url.dbname == "db"
    shown = url.render()
    assert SECRET not in shown and "***" in shown and SECRET not in repr(url)
    assert DbURL.parse(url.render(reveal=True)) == url  # rendering round-trips
    assert [u.hosts for u in url.each_host()] == [(h,) for h in hosts]


def test_multi_host_connect_arguments_are_libpqs_lists_and_agree_with_libpq():
    from psycopg.conninfo import conninfo_to_dict

    text = "postgresql://u:p%40ss@h1:5432,h2,h3:6000/db?target_session_attrs=primary"
    kw = DbURL.parse(text).connect_kwargs()
    assert kw["host"] == "h1,h2,h3" and kw["port"] == "5432,,6000"
    libpq = {k: v for k, v in conninfo_to_dict(text).items() if v is not None}
    assert {k: str(v) for k, v in kw.items()} == {**libpq, "password": "p@ss"}


@pytest.mark.parametrize("text,said", [
    ("postgresql://u:pw@h1:5432,h2:99999/db", "port that is not a number"),
    ("postgresql://u:pw@h1:5432,h2:x/db", "non-numeric port"),
    ("mysql://u:pw@h1,h2/db", "must start with postgresql://"),
    ("postgresql://u:pw@h1,h2/d%ff", "not UTF-8"),
    ("postgresql://u:pw@h1," + "a" * 64 + "/db", "longer than 63 bytes"),
    ("host=h1,h2,h3 port=1,2 user=u password=pw", "3 hosts but 2 ports"),
])
def test_a_bad_multi_host_url_is_refused_without_quoting_it(text, said):
    with pytest.raises(InvalidURL, match=said) as err:
        DbURL.parse(text)
    assert "pw" not in err.value.message.replace("password", "")
