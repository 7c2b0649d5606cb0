"""Issue 15, acceptance 2: the linter's verdicts agree with what PostgreSQL really does.

Each case (a lint corpus file, or a rule's failing or passing example) is applied to a fresh
database of the suite's server, statement by statement, the way ``dbkit migrate`` runs it (one
transaction, or each statement on its own under ``-- transactional: false``). After each
statement, still inside its transaction, the same session reads what the server shows:

- the table locks the transaction holds (``pg_locks``),
- whether a table that existed before the file was rewritten (its or an index's relfilenode
  changed), had an index built on it, or was read or updated (``pg_stat_xact_user_tables``),
- whether the server refused the statement (a transaction block, a new enum value, NOT NULL).

A statement is "long" when an existing table was scanned, rewritten or had an index built
while the transaction held a lock on it that blocks its users (SHARE or stronger on a table,
ACCESS EXCLUSIVE on a materialized view, which only has readers): that is exactly what the
linter's lock rules claim. Statements PostgreSQL refuses to run inside any transaction block
(the CONCURRENTLY forms, VACUUM) run on their own; the lock they take cannot be read after they
return, so for them only a rewrite of a table counts (VACUUM FULL). Every lock mode a finding
names must be one the server shows the transaction holding.

A statement that fails on the server for a reason no rule claims (the corpus files are written
to be linted: some name what an earlier file dropped) did nothing and is not compared; the test
asserts that those are few and lists them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pglast
import psycopg
import pytest
from cluster import unique_name
from psycopg import sql
from test_lint import BASE, EXAMPLES, META

from dbkit.lint.engine import Finding, Linter, is_transactional, lint_sql
from dbkit.lint.rules import LOCK_MODES

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).resolve().parent / "lint_corpus"
MAIN = sorted(CORPUS.glob("*.sql"))
DIFFERENCES = sorted((CORPUS / "differences").glob("*.sql"))

# findings that claim a write-blocking lock is held while a table is scanned or rewritten
LONG_RULES = {
    "index-not-concurrent", "add-column-rewrite", "column-type-change", "set-not-null",
    "constraint-not-valid", "unique-without-index", "vacuum-full", "cluster",
    "reindex-not-concurrent", "exclusion-constraint", "refresh-matview-not-concurrent",
    "set-tablespace", "backfill-in-ddl-transaction", "domain-constraint",
    # TRUNCATE swaps in a new, empty file under ACCESS EXCLUSIVE: fast, but a new relfilenode
    "truncate",
}
# findings that claim PostgreSQL refuses the statement
REFUSAL_RULES = {"concurrently-in-transaction", "refused-in-transaction",
                 "enum-value-used-in-transaction", "add-column-not-null", "drop-database"}
REFUSALS = (psycopg.errors.ActiveSqlTransaction, psycopg.errors.UnsafeNewEnumValueUsage,
            psycopg.errors.NotNullViolation)
SERVER_MODES = {name.title().replace(" ", "") + "Lock": n for n, name in LOCK_MODES.items()}

# rows in every table the corpus starts from, so NOT NULL and scans mean what they do live
CORPUS_ROWS = """
INSERT INTO accounts (email) VALUES ('a@example.com'), ('b@example.com');
INSERT INTO invoices (account_id, total) SELECT id, 10 FROM accounts;
CREATE TABLE legacy_sessions (id bigint);
CREATE TABLE old_audit_log (id bigint);
INSERT INTO old_audit_log VALUES (1);
"""
# after the earlier files: the columns they added filled in, so the constraints later files
# add hold on the rows (05's NOT NULL column without a default fails on rows: add it nullable)
CORPUS_FILL = """
UPDATE accounts SET plan = 'free' WHERE plan IS NULL;
UPDATE accounts SET nickname = email WHERE nickname IS NULL;
UPDATE accounts SET slug = email WHERE slug IS NULL;
"""
TABLESPACE = "fast_disk"  # the name the examples use; each run makes its own, substituted


@dataclass
class Seen:
    """What the server showed for one statement."""

    first: int  # its first and last line in the file
    last: int
    text: str
    refused: str = ""  # the server's error when it refused the statement
    failed: str = ""  # an error no rule claims: the statement did nothing
    long: set[str] = field(default_factory=set)  # tables scanned/rewritten under a write lock
    modes: dict[str, int] = field(default_factory=dict)  # table -> strongest lock held


class Observer:
    """Runs statements on one connection and reads, in the same transaction, what they did."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.existing = self._relations()

    def _relations(self) -> dict[int, tuple[str, int, int]]:
        """oid -> (name, relfilenode, the table an index belongs to, else its own oid)."""
        self.matviews = {oid for (oid,) in self.conn.execute(
            "SELECT oid::int FROM pg_class WHERE relkind = 'm'")}
        rows = self.conn.execute(
            "SELECT c.oid::int, c.relname, c.relfilenode::int, "
            "       coalesce(i.indrelid::int, c.oid::int) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_index i ON i.indexrelid = c.oid "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "  AND n.nspname NOT LIKE 'pg_toast%' AND c.relkind IN ('r', 'm', 'p', 'i')"
        ).fetchall()
        return {oid: (name, node, table) for oid, name, node, table in rows}

    def _activity(self) -> dict[int, int]:
        rows = self.conn.execute(
            "SELECT relid::int, seq_scan + coalesce(idx_scan, 0) + n_tup_upd "
            "FROM pg_stat_xact_user_tables").fetchall()
        return dict(rows)  # type: ignore[arg-type]

    def _locks(self) -> dict[int, int]:
        held: dict[int, int] = {}
        for rel, mode in self.conn.execute(
                "SELECT relation::int, mode FROM pg_locks WHERE pid = pg_backend_pid() "
                "AND locktype = 'relation' AND granted AND relation IS NOT NULL"):
            held[rel] = max(held.get(rel, 0), SERVER_MODES.get(mode, 0))
        return held

    def run(self, seen: Seen, in_block: bool) -> None:
        """Run one statement inside the open transaction (``in_block``) or, alone, in one of
        its own; record what it did."""
        before_rel, before_act = self._relations(), self._activity()
        try:
            if in_block:
                self.conn.execute("SAVEPOINT dbkit_case")
            else:
                self.conn.execute("BEGIN")
            self.conn.execute(sql.SQL(seen.text))  # type: ignore[arg-type]
        except psycopg.Error as exc:
            self.conn.execute("ROLLBACK TO SAVEPOINT dbkit_case" if in_block else "ROLLBACK")
            if not in_block and isinstance(exc, psycopg.errors.ActiveSqlTransaction):
                self._run_alone(seen, before_rel)  # our BEGIN, not the file's, was refused
            elif isinstance(exc, REFUSALS):
                seen.refused = type(exc).__name__
            else:
                seen.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            return
        self._record(seen, before_rel, before_act, self._locks())
        self.conn.execute("RELEASE SAVEPOINT dbkit_case" if in_block else "COMMIT")

    def _run_alone(self, seen: Seen, before_rel: dict[int, tuple[str, int, int]]) -> None:
        try:
            self.conn.execute(sql.SQL(seen.text))  # type: ignore[arg-type]
        except REFUSALS as exc:
            seen.refused = type(exc).__name__
            return
        except psycopg.Error as exc:
            seen.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            return
        after = self._relations()
        for oid, (name, node, table) in before_rel.items():
            if oid == table and oid in self.existing and after.get(oid, (name, node))[1] != node:
                seen.long.add(name)  # a table (not an index) rewritten

    def _record(self, seen: Seen, before_rel: dict[int, tuple[str, int, int]],
                before_act: dict[int, int], locks: dict[int, int]) -> None:
        after_rel, after_act = self._relations(), self._activity()
        busy: set[int] = set()
        for oid, (_, node, table) in before_rel.items():
            if oid in after_rel and after_rel[oid][1] != node:
                busy.add(table)  # rewritten (the table, or one of its indexes)
        for oid, (_, _, table) in after_rel.items():
            if oid not in before_rel and oid != table:
                busy.add(table)  # an index built on it
        busy |= {rel for rel, n in after_act.items() if n > before_act.get(rel, 0)}
        names = {oid: name for oid, (name, _, _) in {**before_rel, **after_rel}.items()}
        for rel in busy:
            blocking = 8 if rel in self.matviews else 5  # ACCESS EXCLUSIVE / SHARE and stronger
            if rel in self.existing and locks.get(rel, 0) >= blocking:
                seen.long.add(names[rel])
        seen.modes = {names[r]: m for r, m in locks.items() if r in self.existing and r in names}


def statements(text: str) -> list[Seen]:
    out = []
    for raw in pglast.parse_sql(text):
        start = raw.stmt_location or 0  # its first token
        end = start + raw.stmt_len if raw.stmt_len else len(text)
        out.append(Seen(text.count("\n", 0, start) + 1, text.count("\n", 0, end) + 1,
                        text[start:end]))
    return out


def apply_leniently(conn: psycopg.Connection, text: str) -> None:
    """Set up what a case starts from: each statement kept if the server takes it."""
    for seen in statements(text):
        try:
            with conn.transaction():
                conn.execute(sql.SQL(seen.text))  # type: ignore[arg-type]
        except psycopg.Error:
            pass


def observe(conn: psycopg.Connection, text: str) -> list[Seen]:
    obs = Observer(conn)
    seen = statements(text)
    transactional = is_transactional(text)
    in_block = transactional
    if transactional:
        conn.execute("BEGIN")
    for s in seen:
        kind = s.text.strip().rstrip(";").strip().upper()
        if not transactional and kind in ("BEGIN", "START TRANSACTION", "COMMIT", "END",
                                          "ROLLBACK"):
            conn.execute(sql.SQL(s.text))  # type: ignore[arg-type]
            in_block = kind in ("BEGIN", "START TRANSACTION")
            continue
        obs.run(s, in_block)
    if transactional:
        conn.execute("ROLLBACK")  # the database is this case's alone
    return seen


_MODE_CLAIM = re.compile(r"(?:holds|takes|holding) (?:the |a |an )?([A-Z][A-Z ]+?) (?:lock|mode)")


def disagreements(findings: list[Finding], seen: list[Seen]) -> list[str]:
    wrong = []
    for s in seen:
        if s.failed:
            continue
        mine = [f for f in findings if s.first <= f.line <= s.last]
        says_long = sorted(f.rule for f in mine if f.rule in LONG_RULES)
        says_refused = sorted(f.rule for f in mine if f.rule in REFUSAL_RULES)
        where = f"line {s.first} ({s.text.strip()[:70]!r})"
        if bool(says_long) != bool(s.long) and not s.refused:
            did = (f"scanned/rewrote {', '.join(sorted(s.long))}" if s.long
                   else "no scan or rewrite under a write lock")
            wrong.append(f"{where}: linter {says_long or 'no lock finding'}, server {did} "
                         f"(locks {s.modes})")
        if bool(says_refused) != bool(s.refused):
            wrong.append(f"{where}: linter {says_refused or 'no refusal'}, server "
                         f"{'refused: ' + s.refused if s.refused else 'ran it'}")
        for f in mine:
            for claim in _MODE_CLAIM.findall(f.message):
                want = {v: k for k, v in LOCK_MODES.items()}.get(claim.strip())
                if want and not s.refused and s.modes and max(s.modes.values()) < want:
                    wrong.append(f"{where}: [{f.rule}] says {claim}, server holds {s.modes}")
    return wrong


@pytest.fixture(scope="module")
def tablespace(pg) -> Iterator[str]:  # noqa: ANN001
    """A real tablespace (made by the superuser in a directory the server's OS user owns), so
    SET TABLESPACE really copies; its name replaces the examples' fast_disk. Empty when the
    server is not on this machine (DBKIT_TEST_ADMIN_URL elsewhere): those cases are skipped."""
    name = unique_name("lint_ts")
    where = Path(tempfile.mkdtemp(prefix="dbkit-ts-"))
    with psycopg.connect(autocommit=True, **pg.connect_kwargs()) as conn:
        data = Path(conn.execute("SHOW data_directory").fetchone()[0])  # type: ignore[index]
        try:
            os.chown(where, data.stat().st_uid, data.stat().st_gid)
            conn.execute(sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(
                sql.Identifier(name), sql.Literal(str(where))))
        except (OSError, psycopg.Error):
            name = ""
        if name:
            conn.execute(sql.SQL("GRANT CREATE ON TABLESPACE {} TO PUBLIC").format(
                sql.Identifier(name)))
        yield name
        if name:
            conn.execute(sql.SQL("DROP TABLESPACE IF EXISTS {}").format(sql.Identifier(name)))
    shutil.rmtree(where, ignore_errors=True)


def _check(app, setup: str, text: str, findings: list[Finding],  # noqa: ANN001
           tablespace: str) -> list[Seen]:
    if TABLESPACE in text and not tablespace:
        pytest.skip("no tablespace could be made on the test server")
    assert app.cli("create").code == 0
    with app.connect(autocommit=True) as conn:
        apply_leniently(conn, setup.replace(TABLESPACE, tablespace))
        seen = observe(conn, text.replace(TABLESPACE, tablespace))
        # tables moved to the tablespace go back, so the database can be dropped with it
        conn.execute(sql.SQL("ALTER TABLE ALL IN TABLESPACE {} SET TABLESPACE pg_default")
                     .format(sql.Identifier(tablespace)))
    assert disagreements(findings, seen) == []
    return seen


def _corpus_setup(files: list[Path]) -> str:
    # 10_destructive drops and renames what later files use: they start without it
    texts = [f.read_text() for f in files if f.name != "10_destructive.sql"]
    if any(f.name == "05_columns.sql" for f in files):
        texts.append("ALTER TABLE accounts ADD COLUMN IF NOT EXISTS plan text;")
    return "\n".join([texts[0], CORPUS_ROWS, *texts[1:], CORPUS_FILL]) if texts else ""


KNOWN_FAILURES: dict[str, list[str]] = {
    "05_columns.sql": ["line 7: FeatureNotSupported: cannot alter type of a column used by a "
                       "generated column"],
    "13_dbkit_only.sql": ["line 2: FeatureNotSupported: cannot truncate a table referenced in "
                          "a foreign key constraint"],
}


@pytest.mark.parametrize("path", MAIN + DIFFERENCES, ids=lambda p: p.name)
def test_corpus_file_agrees_with_postgresql(path: Path, app, tablespace: str) -> None:  # noqa: ANN001
    # the differences start from the schema up to 06 (07b validates what one of them needs
    # still NOT VALID)
    before = ([f for f in MAIN if f.name < path.name] if path in MAIN
              else [f for f in MAIN if f.name < "07"])
    findings = Linter().lint_file(path)
    seen = _check(app, _corpus_setup(before), path.read_text(), findings, tablespace)
    failed = [f"line {s.first}: {s.failed}" for s in seen if s.failed]
    # the corpus statements that cannot run as written (a name 01 already took, a column a
    # generated column depends on, a table referenced by a foreign key): nothing else
    assert failed == KNOWN_FAILURES.get(path.name, [])


CASES = [(rule, i) for rule in EXAMPLES if rule not in META for i in (0, 1)]


@pytest.mark.parametrize(("rule", "which"), CASES,
                         ids=[f"{r}-{'bad' if i == 0 else 'good'}" for r, i in CASES])
def test_rule_example_agrees_with_postgresql(rule: str, which: int, app,  # noqa: ANN001
                                            tablespace: str) -> None:
    text = EXAMPLES[rule][which]
    seen = _check(app, BASE, text, lint_sql(text), tablespace)
    assert [s.failed for s in seen if s.failed] == []
