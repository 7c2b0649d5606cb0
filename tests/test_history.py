"""dbkit history: every apply and rollback recorded, with who, where, when and the outcome."""

from __future__ import annotations

import getpass
import json
import socket

from dbkit import __version__

POSTS_IDS = ["0001_create_posts", "0002_create_users", "0003_add_post_owner",
             "0004_create_votes", "0005_index_posts_owner",
             "0006_require_post_owner"]


def test_history_has_one_row_per_applied_and_rolled_back_migration(created):
    app = created
    assert app.cli("migrate").code == 0
    assert app.cli("rollback", "--steps", "2").code == 0
    r = app.cli("history", "--json")
    assert r.code == 0, r.output
    entries = json.loads(r.out)
    assert [(e["direction"], e["migration"]) for e in entries] == \
        [("apply", i) for i in POSTS_IDS] + [("rollback", POSTS_IDS[-1]), ("rollback", POSTS_IDS[-2])]
    for e in entries:
        assert e["outcome"] == "ok" and e["duration_ms"] > 0
        assert e["finished_at"] >= e["started_at"]
        assert e["db_user"] == app.role and e["os_user"] == getpass.getuser()
        assert e["hostname"] == socket.gethostname() and e["dbkit_version"] == __version__
    assert len({e["run_id"] for e in entries}) == 2  # one migrate run, one rollback run
    text = app.cli("history")
    assert text.code == 0
    lines = text.out.strip().splitlines()
    assert len(lines) == len(POSTS_IDS) + 2 and all(" ms " in ln and "ok" in ln for ln in lines)
    assert f"rollback {POSTS_IDS[-2]}" in lines[-1]


def test_failed_migration_is_recorded_with_its_error(created):
    app = created
    d = app.cwd / "m"
    d.mkdir()
    (d / "0001_bad.sql").write_text("CREATE TABLE a (id int);\nSELECT 1/0;\n")
    assert app.cli("migrate", "--migrations", str(d)).code == 8
    entries = json.loads(app.cli("history", "--json").out)
    assert len(entries) == 1
    e = entries[0]
    assert e["migration"] == "0001_bad" and e["outcome"] == "failed"
    assert "division by zero" in e["error"] and "0001_bad.sql:2:1" in e["error"]  # statement start
    assert e["duration_ms"] is not None


def test_history_limit_and_empty(created):
    app = created
    r = app.cli("history")
    assert r.code == 0 and "no migrations recorded yet" in r.out
    assert json.loads(app.cli("history", "--json").out) == []
    assert app.cli("migrate").code == 0
    last = json.loads(app.cli("history", "--json", "--limit", "2").out)
    assert [e["migration"] for e in last] == POSTS_IDS[-2:]


def test_dry_run_is_not_recorded(created):
    app = created
    assert app.cli("migrate", "--dry-run").code == 0
    assert app.cli("migrate").code == 0
    assert app.cli("rollback", "--dry-run").code == 0
    assert len(json.loads(app.cli("history", "--json").out)) == len(POSTS_IDS)


def test_status_history_and_history_json_show_the_same_instant_the_same_way(created):
    """One format everywhere: ISO 8601 UTC with a Z, whole seconds in text, fractions in
    --json, all naming the same instant."""
    import datetime as dt
    import json
    import re

    app = created
    assert app.cli("migrate").code == 0
    status = json.loads(app.cli("status", "--json").out)["applied"][0]
    history = json.loads(app.cli("history", "--json").out)[0]
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
    assert iso.match(status["applied_at"]) and iso.match(history["started_at"])
    when = {k: dt.datetime.fromisoformat(v) for k, v in
            (("status", status["applied_at"]), ("history", history["started_at"]))}
    assert abs((when["status"] - when["history"]).total_seconds()) < 5  # the same apply
    text_status = app.cli("status").out.splitlines()[0].split()[-1]
    text_history = app.cli("history").out.splitlines()[0].split()[0]
    whole = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    assert whole.match(text_status) and whole.match(text_history), (text_status, text_history)
    assert text_status == when["status"].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert text_history == when["history"].strftime("%Y-%m-%dT%H:%M:%SZ")
