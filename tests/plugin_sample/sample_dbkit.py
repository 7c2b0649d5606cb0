"""A user's test module exercising dbkit's pytest plugin; run by tests/test_plugin.py in a
separate pytest process (plain and under xdist). Its file name keeps it out of normal collection.

DBKIT_SAMPLE_FAIL=1 adds a failing test; DBKIT_SAMPLE_HANG=<file> adds a test that writes the
file and then sleeps (so the outer test can interrupt or kill the run), and one after it (so
the pool has a clone to make ahead meanwhile); DBKIT_SAMPLE_LEAK=1 adds tests that fail with
the connectable URL in their assertion, locals, exception and output."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg
import pytest


@pytest.mark.parametrize("n", range(4))
def test_each_test_gets_its_own_database(dbkit_db, n):
    with psycopg.connect(**dbkit_db.connect_kwargs()) as conn:
        conn.execute("INSERT INTO users (email, password_hash) VALUES (%s, '!')", (f"u{n}@x",))
        conn.commit()  # committed, yet no other test sees it
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1
        assert conn.execute("SELECT current_user").fetchone()[0] == "dbkit_test"


@pytest.mark.parametrize("n", range(4))
def test_dbkit_conn_is_rolled_back_after_each_test(dbkit_conn, n):
    dbkit_conn.execute("INSERT INTO users (email, password_hash) VALUES (%s, '!')", (f"c{n}@x",))
    uid = dbkit_conn.execute("SELECT id FROM users WHERE email = %s", (f"c{n}@x",)).fetchone()[0]
    dbkit_conn.execute("INSERT INTO posts (title, content, owner_id) VALUES ('t', 'c', %s)", (uid,))
    assert dbkit_conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1
    assert dbkit_conn.execute("SELECT count(*) FROM posts").fetchone()[0] == 1


def test_a_broken_transaction_does_not_spill_over(dbkit_conn):
    with pytest.raises(psycopg.errors.UndefinedTable):
        dbkit_conn.execute("SELECT * FROM no_such_table")


def test_after_the_broken_one(dbkit_conn):
    assert dbkit_conn.execute("SELECT count(*) FROM users").fetchone()[0] == 0


def test_template_is_migrated(dbkit_template, dbkit_db):
    assert dbkit_template.name.startswith("dbkit_tpl_")
    assert dbkit_db.dbname.startswith("dbkit_pt_")
    assert "***" in str(dbkit_db) or dbkit_db.password is None


def test_dbkit_url_connects_as_it_is(dbkit_url):
    with psycopg.connect(dbkit_url) as conn:  # the URL itself, password and all
        assert conn.execute("SELECT count(*) FROM posts").fetchone()[0] == 0
    password = psycopg.conninfo.conninfo_to_dict(dbkit_url).get("password")
    assert password is None or (password in dbkit_url and password not in repr(dbkit_url))


@pytest.mark.skipif(not os.environ.get("DBKIT_SAMPLE_FAIL"), reason="only when asked")
def test_that_fails(dbkit_db, dbkit_conn):
    pytest.fail("failing on purpose")


@pytest.mark.skipif(not os.environ.get("DBKIT_SAMPLE_HANG"), reason="only when asked")
def test_that_hangs(dbkit_db, dbkit_conn):
    Path(os.environ["DBKIT_SAMPLE_HANG"]).write_text(dbkit_db.dbname)
    time.sleep(120)


@pytest.mark.skipif(not os.environ.get("DBKIT_SAMPLE_HANG"), reason="only when asked")
def test_that_hangs_too(dbkit_db):
    pass


LEAK = pytest.mark.skipif(not os.environ.get("DBKIT_SAMPLE_LEAK"), reason="only when asked")


@LEAK
def test_leak_in_assertion(dbkit_url):
    assert dbkit_url == "postgresql://somewhere/else"


@LEAK
def test_leak_in_assertion_of_plain_text(dbkit_url):
    url = dbkit_url + "?application_name=x"  # a plain str again
    assert url.startswith("nothing"), f"bad url {url}"


@LEAK
def test_leak_in_output_and_exception(dbkit_url):
    print("connecting to", str(dbkit_url))
    raise RuntimeError(f"cannot use {dbkit_url}")
