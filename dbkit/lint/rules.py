"""The migration linter's rules: what each one catches, why it hurts a live database, the fix.

``Checker`` walks one file's statements (pglast syntax trees, i.e. PostgreSQL's own parser) in
order and remembers what the file itself created, because an operation on a table created
earlier in the same migration cannot block anyone: no other session can see that table yet. It
also follows the table locks the migration's transaction holds (the modes PostgreSQL 15 takes
for each statement), because a scan or a backfill after a statement that blocked writes runs
under that statement's lock until the commit.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pglast import ast
from pglast.enums import (
    AlterTableType,
    ConstrType,
    NullTestType,
    ObjectType,
    ReindexObjectType,
    TransactionStmtKind,
)

from dbkit.lint.volatility import NON_VOLATILE as _CATALOG_NON_VOLATILE


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    fix: str
    severity: str = "error"  # "error" blocks dbkit migrate outside development; "warning" never


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("index-not-concurrent", "CREATE INDEX without CONCURRENTLY on an existing table",
         "use CREATE INDEX CONCURRENTLY, alone in a migration that starts with "
         "'-- transactional: false'"),
    Rule("drop-index-not-concurrent", "DROP INDEX without CONCURRENTLY",
         "use DROP INDEX CONCURRENTLY, alone in a migration that starts with "
         "'-- transactional: false'"),
    Rule("add-column-not-null", "ADD COLUMN ... NOT NULL without a DEFAULT on an existing table",
         "add the column nullable (or with a constant DEFAULT); backfill it in batches in later "
         "migrations; then add CHECK (col IS NOT NULL) NOT VALID, and in a later migration "
         "VALIDATE it, then SET NOT NULL"),
    Rule("add-column-rewrite", "ADD COLUMN whose value must be computed for every row",
         "add the column without the volatile default/identity/stored expression and set the "
         "default for new rows (ALTER COLUMN ... SET DEFAULT); backfill the old rows in batches "
         "in later migrations"),
    Rule("column-type-change", "ALTER COLUMN ... TYPE on an existing table",
         "add a new column of the new type, backfill it in batches in later migrations, switch "
         "the code over, then drop the old column; if the change is binary-compatible (e.g. "
         "varchar(n) to text or a longer varchar) no rewrite happens: suppress with "
         "'-- dbkit: ignore column-type-change'"),
    Rule("set-not-null", "SET NOT NULL without a validated CHECK (col IS NOT NULL) first",
         "add CHECK (col IS NOT NULL) NOT VALID; in a later migration VALIDATE CONSTRAINT it "
         "first, then SET NOT NULL skips the scan (PostgreSQL 12+) and the CHECK can be dropped"),
    Rule("constraint-not-valid", "FOREIGN KEY or CHECK constraint validated while its lock is held",
         "add it with NOT VALID, then ALTER TABLE ... VALIDATE CONSTRAINT in a later migration, "
         "before any other change to that table in it (validation alone takes only a SHARE "
         "UPDATE EXCLUSIVE lock, reads and writes go on)"),
    Rule("unique-without-index", "UNIQUE or PRIMARY KEY constraint that builds its own index",
         "CREATE UNIQUE INDEX CONCURRENTLY in a '-- transactional: false' migration, then "
         "ALTER TABLE ... ADD CONSTRAINT name UNIQUE (or PRIMARY KEY) USING INDEX index_name"),
    Rule("drop-table", "DROP TABLE of an existing table (destructive)",
         "stop using the table in the code and deploy that first; then drop it, marking the "
         "statement '-- dbkit: ignore drop-table' once nothing reads it"),
    Rule("drop-column", "DROP COLUMN (destructive)",
         "stop reading and writing the column in the code and deploy that first; then drop it, "
         "marking the statement '-- dbkit: ignore drop-column'"),
    Rule("truncate", "TRUNCATE of an existing table (destructive)",
         "delete rows in batches with DELETE ... WHERE, or mark the statement "
         "'-- dbkit: ignore truncate' if emptying the table is really intended"),
    Rule("rename-table", "RENAME of an existing table",
         "create the new table (or a view under the new name), move the code over, then drop the "
         "old name in a later migration"),
    Rule("rename-column", "RENAME of a column of an existing table",
         "add a new column, write both in the code, backfill, move reads over, then drop the old "
         "column in a later migration"),
    Rule("vacuum-full", "VACUUM FULL",
         "use plain VACUUM (no lock on reads/writes), or pg_repack for an online rewrite, "
         "outside migrations"),
    Rule("cluster", "CLUSTER",
         "run it in a maintenance window outside migrations, or use pg_repack"),
    Rule("lock-table", "LOCK TABLE in a mode that blocks writes",
         "drop the explicit LOCK; the statements that need a lock take the weakest one they can, "
         "and lock_timeout bounds the wait"),
    Rule("concurrently-in-transaction", "CONCURRENTLY inside a transactional migration",
         "put '-- transactional: false' on the first line of the migration and keep the "
         "CONCURRENTLY statement alone in it, with no BEGIN ... COMMIT around it"),
    Rule("reindex-not-concurrent", "REINDEX without CONCURRENTLY on an existing table or index",
         "use REINDEX ... CONCURRENTLY, alone in a migration that starts with "
         "'-- transactional: false'"),
    Rule("exclusion-constraint", "ADD ... EXCLUDE constraint on an existing table",
         "there is no online way to build an exclusion constraint: run it in a maintenance "
         "window, or create a new table with the constraint and move the rows over"),
    Rule("detach-partition-not-concurrent", "DETACH PARTITION without CONCURRENTLY",
         "use ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY (PostgreSQL 14+), alone in a "
         "migration that starts with '-- transactional: false'"),
    Rule("refused-in-transaction", "a statement PostgreSQL refuses inside a transaction block",
         "put '-- transactional: false' on the first line of the migration (VACUUM, REINDEX "
         "SCHEMA/DATABASE/SYSTEM, CREATE DATABASE ... cannot run in a transaction)"),
    Rule("refresh-matview-not-concurrent", "REFRESH MATERIALIZED VIEW without CONCURRENTLY",
         "give the view a unique index (CREATE UNIQUE INDEX CONCURRENTLY in a "
         "'-- transactional: false' migration) and use REFRESH MATERIALIZED VIEW CONCURRENTLY"),
    Rule("set-tablespace", "ALTER TABLE ... SET TABLESPACE on an existing table",
         "move the table outside migrations in a maintenance window, or with pg_repack "
         "--tablespace"),
    Rule("enum-value-used-in-transaction",
         "a value added by ALTER TYPE ... ADD VALUE is used in the same transaction",
         "add the value in one migration and use it in a later one (or make the ADD VALUE "
         "migration '-- transactional: false')"),
    Rule("update-delete-without-where", "UPDATE or DELETE without WHERE on an existing table",
         "backfill or delete in batches (WHERE id BETWEEN ...), each batch its own transaction"),
    Rule("rename-schema", "RENAME of a schema",
         "create the new schema, move objects and code over, then drop the old one later"),
    Rule("rename-enum-value", "RENAME VALUE of an enum type",
         "add the new value, move the code and the rows over, then stop using the old value"),
    Rule("drop-database", "DROP DATABASE (destructive)",
         "drop databases outside migrations (dbkit drop), never from a migration"),
    Rule("domain-constraint", "ALTER DOMAIN ... ADD CONSTRAINT validated while its lock is held",
         "add it with NOT VALID, then ALTER DOMAIN ... VALIDATE CONSTRAINT in a later migration"),
    Rule("drop-not-null", "DROP NOT NULL on an existing column",
         "make sure no running code relies on the column being NOT NULL, then mark the "
         "statement '-- dbkit: ignore drop-not-null'", "warning"),
    Rule("add-json-column", "ADD COLUMN of type json",
         "use jsonb: json has no equality operator, so SELECT DISTINCT, UNION and GROUP BY over "
         "the table's rows fail", "warning"),
    Rule("backfill-in-ddl-transaction",
         "a backfill UPDATE in the same transaction as a schema change of its table",
         "run the backfill in a migration of its own, after the one with the schema change "
         "(in batches: UPDATE ... WHERE id BETWEEN ...), and no DDL on that table in it"),
    Rule("bad-ignore", "'-- dbkit: ignore' names an unknown rule",
         "use one of the rule ids listed by 'dbkit lint --rules'"),
    Rule("parse-error", "the file is not valid PostgreSQL SQL",
         "fix the syntax (the linter uses PostgreSQL's own parser)"),
)}

# Functions that are not VOLATILE, so PostgreSQL 11+ stores a DEFAULT made of them once in the
# catalog instead of rewriting the table: the built-ins from pg_proc (dbkit/lint/volatility.py)
# plus a few SQL-syntax spellings. Anything else is treated as volatile.
NON_VOLATILE = {
    "now", "statement_timestamp", "transaction_timestamp", "current_date", "localtimestamp",
    "lower", "upper", "btrim", "trim", "length", "char_length", "abs", "round", "md5",
    "to_jsonb", "to_json", "jsonb_build_object", "json_build_object", "jsonb_build_array",
    "json_build_array", "make_date", "make_interval", "make_timestamp", "make_timestamptz",
    "date_trunc", "to_timestamp", "to_date", "concat", "concat_ws", "format", "replace",
    "substring", "substr", "left", "right", "array_fill", "int8", "int4", "text", "numeric",
} | _CATALOG_NON_VOLATILE
SERIAL_TYPES = {"serial", "serial4", "serial2", "serial8", "bigserial", "smallserial"}
# PostgreSQL's table lock modes, by the numbers its lock manager (and LOCK TABLE's parse tree)
# uses for them
ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE, ACCESS_EXCLUSIVE = (
    3, 4, 5, 6, 7, 8)
LOCK_MODES = {1: "ACCESS SHARE", 2: "ROW SHARE", 3: "ROW EXCLUSIVE", 4: "SHARE UPDATE EXCLUSIVE",
              5: "SHARE", 6: "SHARE ROW EXCLUSIVE", 7: "EXCLUSIVE", 8: "ACCESS EXCLUSIVE"}
WRITE_BLOCKING_LOCK = SHARE  # SHARE and stronger conflict with INSERT/UPDATE/DELETE


def _blocks(mode: int) -> str:
    """What a table lock held in ``mode`` makes other sessions wait for."""
    if mode >= ACCESS_EXCLUSIVE:
        return "reads and writes of the table wait"
    if mode >= SHARE:
        return "writes to the table wait (reads go on)"
    return "other schema changes wait (reads and writes go on)"


# ALTER TABLE subcommands that take less than ACCESS EXCLUSIVE (PostgreSQL 15's
# AlterTableGetLockLevel); every other one takes ACCESS EXCLUSIVE
_ALTER_LOCKS = {
    AlterTableType.AT_ValidateConstraint: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_SetStatistics: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_SetOptions: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_ResetOptions: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_ClusterOn: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_DropCluster: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_AttachPartition: SHARE_UPDATE_EXCLUSIVE,
    AlterTableType.AT_EnableTrig: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_EnableAlwaysTrig: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_EnableReplicaTrig: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_DisableTrig: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_EnableTrigAll: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_DisableTrigAll: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_EnableTrigUser: SHARE_ROW_EXCLUSIVE,
    AlterTableType.AT_DisableTrigUser: SHARE_ROW_EXCLUSIVE,
}


def _alter_lock(cmd: Any) -> int:  # an ast.AlterTableCmd
    """The table lock one ALTER TABLE subcommand takes."""
    if cmd.subtype == AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
        return (SHARE_ROW_EXCLUSIVE if cmd.def_.contype == ConstrType.CONSTR_FOREIGN
                else ACCESS_EXCLUSIVE)
    if cmd.subtype == AlterTableType.AT_DetachPartition and _detach_concurrently(cmd):
        return SHARE_UPDATE_EXCLUSIVE
    if cmd.subtype in (AlterTableType.AT_SetRelOptions, AlterTableType.AT_ResetRelOptions):
        return SHARE_UPDATE_EXCLUSIVE  # fillfactor, autovacuum_*: the options migrations set
    return _ALTER_LOCKS.get(cmd.subtype, ACCESS_EXCLUSIVE)


@dataclass
class Hit:
    rule: str
    location: int  # character offset in the file
    message: str


Table = tuple[str, str]  # (schema or "", name)
ColType = tuple[str, tuple[int, ...]]  # (type name, integer type modifiers), e.g. ("varchar", (50,))


def table_key(rv: ast.RangeVar | None) -> Table:
    """``public.users`` and ``users`` are one table (public is the default search_path)."""
    if rv is None:
        return ("", "")
    return _norm((rv.schemaname or "", rv.relname or ""))


def _norm(t: Table) -> Table:
    return ("" if t[0] == "public" else t[0], t[1])


def table_name(t: Table) -> str:
    return f"{t[0]}.{t[1]}" if t[0] else t[1]


@dataclass
class Schema:
    """What migrations left for the ones after them, as far as the rules need it: NOT VALID
    constraints ((table, name) -> the column the CHECK proves NOT NULL, or "") and column types.
    A file's own part depends only on that file, so each file is parsed once and the parts are
    added up in migration order."""

    not_valid: dict[tuple[Table, str], str] = field(default_factory=dict)
    columns: dict[tuple[Table, str], ColType] = field(default_factory=dict)
    tablespaces: dict[Table, str] = field(default_factory=dict)  # where migrations put tables

    def add(self, later: Schema) -> None:
        self.not_valid.update(later.not_valid)
        self.columns.update(later.columns)
        self.tablespaces.update(later.tablespaces)


@dataclass
class Checker:
    """Checks the statements of one migration file, in order."""

    transactional: bool = True
    created: list[Table] = field(default_factory=list)
    created_indexes: set[str] = field(default_factory=set)
    # constraints added NOT VALID in this file: (table, name) -> column proven NOT NULL, or ""
    not_valid: dict[tuple[Table, str], str] = field(default_factory=dict)
    not_null_proven: set[tuple[Table, str]] = field(default_factory=set)
    # what earlier migrations left, asked for only when this file validates a constraint it did
    # not add (the two-migration pattern for SET NOT NULL) or changes a column's type
    earlier: Callable[[], Schema] = lambda: Schema()
    # column types known from this file's CREATE TABLE / ADD COLUMN / ALTER TYPE
    columns: dict[tuple[Table, str], ColType] = field(default_factory=dict)
    tablespaces: dict[Table, str] = field(default_factory=dict)  # set by this file
    in_block: bool = False  # inside an explicit BEGIN ... COMMIT of a non-transactional file
    created_types: set[str] = field(default_factory=set)  # enums and domains made in this file
    new_enum_values: dict[str, str] = field(default_factory=dict)  # value -> type, uncommitted
    # the strongest lock this transaction holds on each table: (mode, what took it, offset)
    held: dict[Table, tuple[int, str, int]] = field(default_factory=dict)
    text: str = ""  # the file, and its tokens: to point at the offending clause
    tokens: list[Any] = field(default_factory=list)
    token_starts: list[int] = field(default_factory=list)
    end: int = 0  # where the statement being checked ends
    in_do: bool = False  # offsets inside a DO block's body are not offsets in the file
    # with a connection: of the function names given, those the server says are not VOLATILE
    not_volatile: Callable[[set[str]], set[str]] | None = None

    def left(self) -> Schema:
        """What this file leaves for the migrations after it."""
        return Schema(dict(self.not_valid), dict(self.columns), dict(self.tablespaces))

    @property
    def in_tx(self) -> bool:
        # a DO block is one statement, so one transaction even in a non-transactional file
        return self.transactional or self.in_block or self.in_do

    def block(self) -> str:
        return ("the explicit BEGIN ... COMMIT block (remove the BEGIN and COMMIT too)"
                if self.in_block else "a transaction block")

    def is_new(self, t: Table) -> bool:
        return any(t[1] == c[1] and (not t[0] or not c[0] or t[0] == c[0]) for c in self.created)

    def statement(self, stmt: Any, start: int, end: int) -> Iterator[Hit]:
        """Check one top-level statement of the file, ``text[start:end]``."""
        self.end = end
        yield from self.check(stmt, start)
        if not self.in_tx:  # autocommit: the statement's locks are gone once it returns
            self.held.clear()

    def take(self, t: Table, mode: int, what: str, at: int) -> None:
        """This transaction now holds ``mode`` on ``t`` until it ends."""
        if mode > self.held.get(t, (0, "", 0))[0]:
            self.held[t] = (mode, what, at)

    def holder(self, t: Table) -> str:
        """'the ACCESS EXCLUSIVE lock that ALTER TABLE ... (line 3) took' for a held lock."""
        mode, what, at = self.held[t]
        return f"the {LOCK_MODES[mode]} lock that {what} (line {self.line(at)}) took"

    def line(self, offset: int) -> int:
        return self.text.count("\n", 0, offset) + 1

    def check(self, stmt: Any, start: int) -> Iterator[Hit]:
        if self.new_enum_values and not isinstance(stmt, ast.AlterEnumStmt):
            used = sorted({v for v in _string_constants(stmt) if v in self.new_enum_values})
            if used:
                quoted = {"'" + v.replace("'", "''") + "'" for v in used}
                at = next((t.start for t in self._tokens(start) if t.name == "SCONST"
                           and self.text[t.start:t.end + 1] in quoted), start)
                yield Hit("enum-value-used-in-transaction", at,
                          f"enum value {', '.join(repr(v) for v in used)} was added by ALTER "
                          "TYPE ... ADD VALUE in this transaction: PostgreSQL refuses to use it "
                          "before that commits ('unsafe use of new value'), the migration fails")
        handler = getattr(self, f"_{type(stmt).__name__}", None)
        if handler is not None:
            yield from handler(stmt, start)

    # -- transactions, DO blocks ----------------------------------------------------
    def _TransactionStmt(self, stmt: ast.TransactionStmt, start: int) -> Iterator[Hit]:
        if stmt.kind in (TransactionStmtKind.TRANS_STMT_BEGIN, TransactionStmtKind.TRANS_STMT_START):
            self.in_block = True
        elif stmt.kind in (TransactionStmtKind.TRANS_STMT_COMMIT,
                           TransactionStmtKind.TRANS_STMT_ROLLBACK,
                           TransactionStmtKind.TRANS_STMT_PREPARE):
            self.in_block = False
            if not self.in_tx:
                self.new_enum_values.clear()
        return iter(())

    def _DoStmt(self, stmt: ast.DoStmt, start: int) -> Iterator[Hit]:
        """Statements run by a PL/pgSQL DO block (one transaction, like any statement): its
        static SQL and EXECUTE of a literal, each pointed at where its text is in the file."""
        self.in_do = True
        try:
            for query, inner in _do_statements(stmt):
                at = _find_prefix(self.text, query.strip(), start, self.end)
                for hit in self.check(inner, at):
                    yield Hit(hit.rule, at, f"in a DO block: {hit.message}")
        finally:
            self.in_do = False

    # -- where in the statement -------------------------------------------------------
    def _tokens(self, start: int) -> list[Any]:
        """The statement's tokens from ``start`` on, comments left out."""
        if self.in_do:
            return []
        i = bisect.bisect_left(self.token_starts, start)
        j = bisect.bisect_left(self.token_starts, self.end)
        return [t for t in self.tokens[i:j] if t.name != "SQL_COMMENT"]

    def keyword(self, start: int, *names: str) -> int:
        """Where the first of ``names`` (scanner token names) is in the statement, else start."""
        return next((t.start for t in self._tokens(start) if t.name in names), start)

    def clauses(self, rv: ast.RangeVar | None, n: int, start: int) -> list[int]:
        """Where each of the ``n`` comma-separated subcommands of an ALTER ... starts: after
        the relation's (possibly qualified) name, split at commas outside parentheses."""
        toks = self._tokens(start)
        loc = rv.location if rv is not None and rv.location is not None else -1
        i = next((k for k, t in enumerate(toks) if t.start >= loc), len(toks)) if loc >= 0 else 0
        i += 1  # the name
        while i + 1 < len(toks) and toks[i].name == "ASCII_46":  # . schema-qualified
            i += 2
        if i < len(toks) and toks[i].name == "ASCII_42":  # * (descendants)
            i += 1
        found, depth, at_start = [], 0, True
        for t in toks[i:]:
            if at_start and t.name != "ASCII_59":
                found.append(t.start)
                at_start = False
            if t.name == "ASCII_40":
                depth += 1
            elif t.name == "ASCII_41":
                depth -= 1
            elif t.name == "ASCII_44" and depth == 0:
                at_start = True
        return found if len(found) == n else [start] * n

    # -- types, schemas, databases, domains ---------------------------------------------
    def _CreateEnumStmt(self, stmt: ast.CreateEnumStmt, start: int) -> Iterator[Hit]:
        self.created_types.add(_last(stmt.typeName))
        return iter(())

    def _CreateDomainStmt(self, stmt: ast.CreateDomainStmt, start: int) -> Iterator[Hit]:
        self.created_types.add(_last(stmt.domainname))
        return iter(())

    def _AlterEnumStmt(self, stmt: ast.AlterEnumStmt, start: int) -> Iterator[Hit]:
        typ = _last(stmt.typeName)
        if typ in self.created_types:
            return
        if stmt.oldVal:
            yield Hit("rename-enum-value", self.keyword(start, "RENAME"),
                      f"renaming value {stmt.oldVal!r} of enum {typ} to {stmt.newVal!r} breaks "
                      "every running instance of the application that still uses the old value")
        elif stmt.newVal and self.in_tx:
            self.new_enum_values[stmt.newVal] = typ

    def _DropdbStmt(self, stmt: ast.DropdbStmt, start: int) -> Iterator[Hit]:
        yield Hit("drop-database", start,
                  f"DROP DATABASE {stmt.dbname} deletes all of its data (and PostgreSQL refuses "
                  "it inside a transaction block)")

    def _CreatedbStmt(self, stmt: ast.CreatedbStmt, start: int) -> Iterator[Hit]:
        if self.in_tx:
            yield Hit("refused-in-transaction", start,
                      "CREATE DATABASE cannot run inside a transaction block: this migration "
                      "will fail")

    def _AlterDomainStmt(self, stmt: ast.AlterDomainStmt, start: int) -> Iterator[Hit]:
        typ = _last(stmt.typeName)
        c = stmt.def_
        if (stmt.subtype == "C" and isinstance(c, ast.Constraint) and not c.skip_validation
                and typ not in self.created_types):
            yield Hit("domain-constraint", _loc(c, start),
                      f"adding a constraint to domain {typ} checks every column of that domain "
                      "in every table, holding a SHARE lock on each: writes to them wait")

    # -- tables created or renamed ----------------------------------------------------
    def _CreateStmt(self, stmt: ast.CreateStmt, start: int) -> Iterator[Hit]:
        t = table_key(stmt.relation)
        self.created.append(t)
        self.tablespaces[t] = stmt.tablespacename or "pg_default"
        for elt in stmt.tableElts or ():
            if isinstance(elt, ast.ColumnDef) and elt.colname:
                self.columns[(t, elt.colname)] = _col_type(elt.typeName)
        return iter(())

    def _CreateTableAsStmt(self, stmt: ast.CreateTableAsStmt, start: int) -> Iterator[Hit]:
        self.created.append(table_key(stmt.into.rel if stmt.into else None))
        return iter(())

    def _SelectStmt(self, stmt: ast.SelectStmt, start: int) -> Iterator[Hit]:
        if stmt.intoClause is not None:  # SELECT ... INTO new_table
            self.created.append(table_key(stmt.intoClause.rel))
        return iter(())

    def _RenameStmt(self, stmt: ast.RenameStmt, start: int) -> Iterator[Hit]:
        t = table_key(stmt.relation)
        at = self.keyword(start, "RENAME")
        if stmt.relation is not None and stmt.relationType == ObjectType.OBJECT_TABLE:
            self.take(t, ACCESS_EXCLUSIVE, f"ALTER TABLE {table_name(t)} RENAME", at)
        if stmt.renameType == ObjectType.OBJECT_SCHEMA:
            yield Hit("rename-schema", at,
                      f"renaming schema {stmt.subname} to {stmt.newname} breaks every running "
                      "instance of the application that names its objects by the old schema")
        elif stmt.renameType == ObjectType.OBJECT_TABLE:
            if self.is_new(t):
                self.created.append((t[0], stmt.newname or ""))
                return
            yield Hit("rename-table", at,
                      f"renaming table {table_name(t)} to {stmt.newname} breaks every running "
                      "instance of the application that still uses the old name")
        elif (stmt.renameType == ObjectType.OBJECT_COLUMN
              and stmt.relationType == ObjectType.OBJECT_TABLE and not self.is_new(t)):
            yield Hit("rename-column", at,
                      f"renaming column {table_name(t)}.{stmt.subname} to {stmt.newname} breaks "
                      "every running instance of the application that still uses the old name")

    # -- indexes ------------------------------------------------------------------------
    def _IndexStmt(self, stmt: ast.IndexStmt, start: int) -> Iterator[Hit]:
        t = table_key(stmt.relation)
        if stmt.idxname:
            self.created_indexes.add(stmt.idxname)
        self.take(t, SHARE_UPDATE_EXCLUSIVE if stmt.concurrent else SHARE,
                            f"CREATE INDEX{' CONCURRENTLY' if stmt.concurrent else ''} on "
                            f"{table_name(t)}", start)
        if stmt.concurrent:
            if self.in_tx:
                yield Hit("concurrently-in-transaction", self.keyword(start, "CONCURRENTLY"),
                          f"CREATE INDEX CONCURRENTLY cannot run inside {self.block()}: "
                          "this migration will fail")
        elif not self.is_new(t):
            yield Hit("index-not-concurrent", start,
                      f"building an index on {table_name(t)} holds a SHARE lock: every INSERT, "
                      "UPDATE and DELETE on it waits until the whole index is built")

    def _DropStmt(self, stmt: ast.DropStmt, start: int) -> Iterator[Hit]:
        names = [".".join(n.sval for n in obj) for obj in (stmt.objects or ())
                 if isinstance(obj, tuple)]
        if stmt.removeType == ObjectType.OBJECT_INDEX:
            if stmt.concurrent and self.in_tx:
                yield Hit("concurrently-in-transaction", self.keyword(start, "CONCURRENTLY"),
                          f"DROP INDEX CONCURRENTLY cannot run inside {self.block()}: "
                          "this migration will fail")
            old = [n for n in names if n.rsplit(".", 1)[-1] not in self.created_indexes]
            if not stmt.concurrent and old:
                yield Hit("drop-index-not-concurrent", start,
                          f"dropping index {', '.join(old)} takes an ACCESS EXCLUSIVE lock on its "
                          "table: reads and writes wait for it, and behind it, while it waits")
        elif stmt.removeType == ObjectType.OBJECT_TABLE:
            for n in names:
                self.take(_split(n), ACCESS_EXCLUSIVE, f"DROP TABLE {n}", start)
            old_tables = [n for n in names if not self.is_new(_split(n))]
            if old_tables:
                yield Hit("drop-table", start,
                          f"dropping table {', '.join(old_tables)} deletes its data and breaks "
                          "running code that still uses it")

    def _ReindexStmt(self, stmt: ast.ReindexStmt, start: int) -> Iterator[Hit]:
        concurrent = any(p.defname == "concurrently" and _truthy(p.arg)
                         for p in (stmt.params or ()))
        kind = stmt.kind
        many = kind not in (ReindexObjectType.REINDEX_OBJECT_INDEX,
                            ReindexObjectType.REINDEX_OBJECT_TABLE)
        if kind == ReindexObjectType.REINDEX_OBJECT_TABLE:
            t = table_key(stmt.relation)
            self.take(t, SHARE_UPDATE_EXCLUSIVE if concurrent else SHARE,
                                f"REINDEX TABLE {table_name(t)}", start)
        if self.in_tx and (concurrent or many):
            yield Hit("concurrently-in-transaction" if concurrent else "refused-in-transaction",
                      self.keyword(start, "CONCURRENTLY") if concurrent else start,
                      f"REINDEX {'CONCURRENTLY ' if concurrent else ''}"
                      f"{_kind_word(kind)} cannot run inside {self.block()}: "
                      "this migration will fail")
        if concurrent or kind in (ReindexObjectType.REINDEX_OBJECT_SYSTEM,):
            return
        if kind == ReindexObjectType.REINDEX_OBJECT_INDEX:
            rv = stmt.relation
            if rv is not None and rv.relname in self.created_indexes:
                return
            what = (f"REINDEX INDEX {rv.relname if rv else ''} holds an ACCESS EXCLUSIVE lock "
                    "on the index (reads that use it wait) and a SHARE lock on its table "
                    "(writes wait) until the index is rebuilt")
        elif kind == ReindexObjectType.REINDEX_OBJECT_TABLE:
            t = table_key(stmt.relation)
            if self.is_new(t):
                return
            what = (f"REINDEX TABLE {table_name(t)} holds a SHARE lock on it (writes wait) and "
                    "an ACCESS EXCLUSIVE lock on each index while it is rebuilt")
        else:
            what = (f"REINDEX {_kind_word(kind)} {stmt.name or ''} locks each table "
                    "in turn against writes (SHARE) while its indexes are rebuilt")
        yield Hit("reindex-not-concurrent", start, what)

    def _RefreshMatViewStmt(self, stmt: ast.RefreshMatViewStmt, start: int) -> Iterator[Hit]:
        t = table_key(stmt.relation)
        self.take(t, EXCLUSIVE if stmt.concurrent else ACCESS_EXCLUSIVE,
                            f"REFRESH MATERIALIZED VIEW {table_name(t)}", start)
        if not stmt.concurrent and not self.is_new(t):
            yield Hit("refresh-matview-not-concurrent", start,
                      f"REFRESH MATERIALIZED VIEW {table_name(t)} holds an ACCESS EXCLUSIVE lock "
                      "on it: every read of the view waits until the refresh finishes")

    def _UpdateStmt(self, stmt: ast.UpdateStmt, start: int) -> Iterator[Hit]:
        t = table_key(stmt.relation)
        if self.in_tx and not self.is_new(t):
            if self.held.get(t, (0,))[0] >= WRITE_BLOCKING_LOCK:
                yield Hit("backfill-in-ddl-transaction", start,
                          f"this UPDATE of {table_name(t)} runs while the transaction holds "
                          f"{self.holder(t)}: {_blocks(self.held[t][0])} for the whole backfill")
        self.take(t, ROW_EXCLUSIVE, f"UPDATE {table_name(t)}", start)
        yield from self._unbounded("UPDATE", stmt.relation, stmt.whereClause, start)

    def _DeleteStmt(self, stmt: ast.DeleteStmt, start: int) -> Iterator[Hit]:
        return self._unbounded("DELETE", stmt.relation, stmt.whereClause, start)

    def _unbounded(self, verb: str, rv: ast.RangeVar | None, where: Any, start: int
                   ) -> Iterator[Hit]:
        t = table_key(rv)
        if where is None and not self.is_new(t):
            yield Hit("update-delete-without-where", start,
                      f"{verb} without WHERE on {table_name(t)} locks every row of it for the "
                      "rest of the migration's transaction: every concurrent write to the table "
                      "waits (and the table bloats)")

    # -- destructive and heavy-lock statements -----------------------------------------------
    def _TruncateStmt(self, stmt: ast.TruncateStmt, start: int) -> Iterator[Hit]:
        for r in stmt.relations or ():
            self.take(table_key(r), ACCESS_EXCLUSIVE,
                                f"TRUNCATE {table_name(table_key(r))}", start)
        old = [table_name(table_key(r)) for r in stmt.relations or ()
               if not self.is_new(table_key(r))]
        if old:
            yield Hit("truncate", start,
                      f"TRUNCATE {', '.join(old)} deletes every row and takes an ACCESS EXCLUSIVE "
                      "lock")

    def _VacuumStmt(self, stmt: ast.VacuumStmt, start: int) -> Iterator[Hit]:
        full = any(o.defname == "full" and _truthy(o.arg) for o in (stmt.options or ()))
        if stmt.is_vacuumcmd and self.in_tx:
            yield Hit("refused-in-transaction", start,
                      f"VACUUM cannot run inside {self.block()}: this migration will fail")
        if stmt.is_vacuumcmd and full:
            yield Hit("vacuum-full", self.keyword(start, "FULL"),
                      "VACUUM FULL rewrites the table under an ACCESS EXCLUSIVE lock: reads and "
                      "writes wait until it finishes")

    def _ClusterStmt(self, stmt: ast.ClusterStmt, start: int) -> Iterator[Hit]:
        if stmt.relation is not None:
            t = table_key(stmt.relation)
            self.take(t, ACCESS_EXCLUSIVE, f"CLUSTER {table_name(t)}", start)
        if stmt.relation is None or not self.is_new(table_key(stmt.relation)):
            yield Hit("cluster", start,
                      "CLUSTER rewrites the table under an ACCESS EXCLUSIVE lock: reads and writes "
                      "wait until it finishes")

    def _LockStmt(self, stmt: ast.LockStmt, start: int) -> Iterator[Hit]:
        mode = stmt.mode or ACCESS_EXCLUSIVE
        for r in stmt.relations or ():
            t = table_key(r)
            self.take(t, mode, f"LOCK TABLE {table_name(t)}", start)
        old = [table_name(table_key(r)) for r in stmt.relations or ()
               if not self.is_new(table_key(r))]
        at = self.keyword(start, "IN_P")  # IN ... MODE; without it, the default mode
        if mode >= WRITE_BLOCKING_LOCK and old:
            yield Hit("lock-table", at,
                      f"LOCK TABLE {', '.join(old)} takes {LOCK_MODES[mode]} mode"
                      f"{' (the default)' if at == start else ''}: {_blocks(mode)} for the "
                      "rest of the migration's transaction")

    # -- ALTER TABLE ------------------------------------------------------------------
    def _AlterTableStmt(self, stmt: ast.AlterTableStmt, start: int) -> Iterator[Hit]:
        if stmt.objtype != ObjectType.OBJECT_TABLE:
            return
        t = table_key(stmt.relation)
        new = self.is_new(t)
        name = table_name(t)
        cmds = list(stmt.cmds or ())
        at = self.clauses(stmt.relation, len(cmds), start)
        # the statement takes the strongest lock any of its subcommands needs, up front
        mode = max((_alter_lock(cmd) for cmd in cmds), default=ACCESS_EXCLUSIVE)
        self.take(t, mode, f"ALTER TABLE {name}", at[0] if at else start)
        for cmd in cmds:
            if isinstance(cmd.def_, ast.Constraint) and cmd.def_.contype == ConstrType.CONSTR_FOREIGN:
                ref = table_key(cmd.def_.pktable)
                self.take(ref, SHARE_ROW_EXCLUSIVE, f"ALTER TABLE {name} ADD FOREIGN KEY",
                          at[0] if at else start)
        for cmd, here in zip(cmds, at, strict=True):
            yield from self._alter_cmd(cmd, t, new, name, here)

    def _alter_cmd(self, cmd: Any, t: Table, new: bool, name: str, at: int
                   ) -> Iterator[Hit]:
        sub = cmd.subtype
        if sub == AlterTableType.AT_DetachPartition:
            if _detach_concurrently(cmd):
                if self.in_tx:
                    yield Hit("concurrently-in-transaction", self.keyword(at, "CONCURRENTLY"),
                              "DETACH PARTITION CONCURRENTLY cannot run inside "
                              f"{self.block()}: this migration will fail")
            elif not new:
                yield Hit("detach-partition-not-concurrent", at,
                          f"DETACH PARTITION takes an ACCESS EXCLUSIVE lock on {name}: it waits "
                          "for every running query on any of its partitions, and every read and "
                          "write of the partitioned table waits behind it")
        elif sub == AlterTableType.AT_AddColumn:
            yield from self._add_column(cmd.def_, t, new, at)
        elif sub == AlterTableType.AT_AddConstraint:
            yield from self._add_constraint(cmd.def_, t, new, at)
        elif sub == AlterTableType.AT_ValidateConstraint:
            col = self.not_valid.pop((t, cmd.name), None)
            if col is None:
                col = self.earlier().not_valid.get((t, cmd.name)) or None
            if (self.in_tx and not new
                    and self.held.get(t, (0,))[0] >= WRITE_BLOCKING_LOCK):
                yield Hit("constraint-not-valid", at,
                          f"VALIDATE CONSTRAINT {cmd.name} scans all of {name} while this "
                          f"transaction holds {self.holder(t)}: "
                          f"{_blocks(self.held[t][0])} for the whole scan (alone, VALIDATE "
                          "takes only SHARE UPDATE EXCLUSIVE)")
            if col:
                self.not_null_proven.add((t, col))
        elif new:
            if sub == AlterTableType.AT_SetTableSpace:
                self.tablespaces[t] = cmd.name or ""
            if sub == AlterTableType.AT_AlterColumnType and cmd.name:
                self.columns[(t, cmd.name)] = _col_type(cmd.def_.typeName)
        elif sub == AlterTableType.AT_SetTableSpace:
            # moving a table to where it already is copies nothing (PostgreSQL returns at once);
            # a table no migration moved is taken to be in pg_default, as CREATE TABLE puts it
            now = self.tablespaces.get(t) or self.earlier().tablespaces.get(t, "pg_default")
            self.tablespaces[t] = cmd.name or ""
            if cmd.name == now:
                return
            yield Hit("set-tablespace", at,
                      f"SET TABLESPACE copies {name} and its files to tablespace {cmd.name} "
                      "under an ACCESS EXCLUSIVE lock: reads and writes wait until it is done")
        elif sub == AlterTableType.AT_DropNotNull:
            yield Hit("drop-not-null", at,
                      f"DROP NOT NULL on {name}.{cmd.name}: running code that assumes the "
                      "column is never NULL may break once NULLs appear")
        elif sub == AlterTableType.AT_AlterColumnType:
            if self._relaxing(t, cmd):
                return
            yield Hit("column-type-change", at,
                      f"changing the type of {name}.{cmd.name} rewrites the table and its "
                      "indexes under an ACCESS EXCLUSIVE lock (reads and writes wait), unless "
                      "the new type is binary-compatible; running code may also break")
        elif sub == AlterTableType.AT_SetNotNull and (t, cmd.name) not in self.not_null_proven:
            yield Hit("set-not-null", at,
                      f"SET NOT NULL on {name}.{cmd.name} scans the whole table under an "
                      "ACCESS EXCLUSIVE lock (reads and writes wait)")
        elif sub == AlterTableType.AT_DropColumn:
            yield Hit("drop-column", at,
                      f"dropping column {name}.{cmd.name} deletes its data and breaks running "
                      "code that still reads or writes it")

    def _add_column(self, col: ast.ColumnDef, t: Table, new: bool, start: int) -> Iterator[Hit]:
        cons: list[ast.Constraint] = list(col.constraints or ())
        kinds = {c.contype for c in cons}
        where = f"{table_name(t)}.{col.colname}"
        names = col.typeName.names if col.typeName else None
        typename = (names[-1].sval or "") if names else ""
        has_value = bool(kinds & {ConstrType.CONSTR_DEFAULT, ConstrType.CONSTR_IDENTITY,
                                  ConstrType.CONSTR_GENERATED}) or typename in SERIAL_TYPES
        for c in cons:
            if c.contype == ConstrType.CONSTR_CHECK:
                self._remember_check(c, t)
        if col.colname:
            self.columns[(t, col.colname)] = _col_type(col.typeName)
        loc = _loc(col, start)
        if typename == "json" and not (col.typeName and col.typeName.arrayBounds):
            yield Hit("add-json-column", loc,
                      f"{where} is json, which has no equality operator: SELECT DISTINCT, UNION "
                      f"and GROUP BY over rows of {table_name(t)} fail")
        if new:
            return
        if (ConstrType.CONSTR_NOTNULL in kinds or col.is_not_null) and not has_value:
            yield Hit("add-column-not-null", loc,
                      f"adding {where} as NOT NULL without a DEFAULT fails on a table that has "
                      "rows, and breaks running code whose INSERTs do not set it")
        rewrite = _rewrite_reason(cons, typename, self.not_volatile)
        if rewrite:
            yield Hit("add-column-rewrite", loc,
                      f"adding {where} with {rewrite} rewrites the whole table under an ACCESS "
                      "EXCLUSIVE lock (reads and writes wait)")
        for c in cons:
            if c.contype == ConstrType.CONSTR_FOREIGN and not has_value:
                # a new column without a default is all NULL: PostgreSQL marks its inline
                # FOREIGN KEY valid without checking a row (measured: no scan of either table)
                continue
            if c.contype in (ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_CHECK):
                yield self._unvalidated(c, t, start)
            elif c.contype in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY):
                yield self._unique(c, t, start)

    def _relaxing(self, t: Table, cmd: ast.AlterTableCmd) -> bool:
        """The type change needs no rewrite: binary-coercible, or only a limit relaxed."""
        col_def = cmd.def_
        if not isinstance(col_def, ast.ColumnDef):
            return False
        new_type = _col_type(col_def.typeName)
        key = (t, cmd.name or "")
        old_type = self.columns.get(key) or self.earlier().columns.get(key)
        self.columns[key] = new_type
        if old_type is None or col_def.raw_default is not None or col_def.collClause is not None:
            return False
        return _no_rewrite(old_type, new_type)

    def _add_constraint(self, c: ast.Constraint, t: Table, new: bool, start: int
                        ) -> Iterator[Hit]:
        if c.contype == ConstrType.CONSTR_CHECK:
            self._remember_check(c, t)
        elif c.contype == ConstrType.CONSTR_FOREIGN and c.skip_validation and c.conname:
            self.not_valid[(t, c.conname)] = ""
        if new:
            return
        if c.contype in (ConstrType.CONSTR_FOREIGN, ConstrType.CONSTR_CHECK) and not c.skip_validation:
            yield self._unvalidated(c, t, start)
        elif c.contype in (ConstrType.CONSTR_UNIQUE, ConstrType.CONSTR_PRIMARY) and not c.indexname:
            yield self._unique(c, t, start)
        elif c.contype == ConstrType.CONSTR_EXCLUSION:
            yield Hit("exclusion-constraint", _loc(c, start),
                      f"adding an EXCLUDE constraint on {table_name(t)} builds its index under an "
                      "ACCESS EXCLUSIVE lock: reads and writes wait until it is built")

    def _remember_check(self, c: ast.Constraint, t: Table) -> None:
        cols = _not_null_columns(c.raw_expr)
        if c.skip_validation:
            if c.conname:
                self.not_valid[(t, c.conname)] = cols[0] if len(cols) == 1 else ""
        else:
            self.not_null_proven.update((t, col) for col in cols)

    def _unvalidated(self, c: ast.Constraint, t: Table, start: int) -> Hit:
        if c.contype == ConstrType.CONSTR_FOREIGN:
            ref = table_name(table_key(c.pktable))
            what = (f"adding a FOREIGN KEY on {table_name(t)} scans the whole table while holding "
                    f"a SHARE ROW EXCLUSIVE lock on both {table_name(t)} and {ref}: writes to "
                    "both wait")
        else:
            what = (f"adding a CHECK constraint on {table_name(t)} scans the whole table while "
                    "holding an ACCESS EXCLUSIVE lock: reads and writes wait")
        return Hit("constraint-not-valid", _loc(c, start), what)

    def _unique(self, c: ast.Constraint, t: Table, start: int) -> Hit:
        kind = "PRIMARY KEY" if c.contype == ConstrType.CONSTR_PRIMARY else "UNIQUE"
        return Hit("unique-without-index", _loc(c, start),
                   f"adding a {kind} constraint on {table_name(t)} builds its index under an "
                   "ACCESS EXCLUSIVE lock: reads and writes wait until it is built")


def _find_prefix(text: str, query: str, start: int, end: int) -> int:
    """Where the longest start of ``query`` (at least a word's worth) is in text[start:end]:
    a DO block's statement, or the first literal piece of an EXECUTE string; else ``start``."""
    n = min(len(query), 80)
    while n >= 6:
        found = text.find(query[:n], start, end)
        if found >= 0:
            return found
        n -= 1 if n <= 20 else n // 4
    return start


def _loc(node: Any, default: int) -> int:
    loc = getattr(node, "location", None)
    return loc if isinstance(loc, int) and loc >= 0 else default


def _split(name: str) -> Table:
    schema, _, rel = name.rpartition(".")
    return _norm((schema, rel))


def _truthy(arg: Any) -> bool:
    """A DefElem option's value: absent means on (``VACUUM FULL``); 'false'/'off'/0 mean off."""
    if arg is None:
        return True
    val = arg.ival if isinstance(arg, ast.Integer) else getattr(arg, "sval", "true")
    return str(val).lower() not in ("false", "off", "0", "no")


def _detach_concurrently(cmd: ast.AlterTableCmd) -> bool:
    return bool(getattr(cmd.def_, "concurrent", False))


def _not_null_columns(expr: Any) -> list[str]:
    """Columns that ``expr`` proves NOT NULL: ``col IS NOT NULL`` alone or AND-ed."""
    if isinstance(expr, ast.NullTest) and expr.nulltesttype == NullTestType.IS_NOT_NULL:
        fields = expr.arg.fields if isinstance(expr.arg, ast.ColumnRef) else None
        if fields and len(fields) == 1:
            field_ = fields[0]
            return [field_.sval] if isinstance(field_, ast.String) and field_.sval else []
    if isinstance(expr, ast.BoolExpr) and expr.boolop == 0:  # AND_EXPR
        return [c for arg in expr.args or () for c in _not_null_columns(arg)]
    return []


def _rewrite_reason(cons: list[ast.Constraint], typename: str,
                    not_volatile: Callable[[set[str]], set[str]] | None = None) -> str:
    if typename in SERIAL_TYPES:
        return f"type {typename} (a nextval() default)"
    for c in cons:
        if c.contype == ConstrType.CONSTR_IDENTITY:
            return "an identity"
        if c.contype == ConstrType.CONSTR_GENERATED and c.generated_kind != "v":
            return "a stored generated expression"
        if c.contype == ConstrType.CONSTR_DEFAULT:
            unknown = _unknown_functions(c.raw_expr)
            if unknown and not_volatile is not None:  # the server's own pg_proc, if asked
                unknown -= not_volatile(unknown)
            volatile = sorted(unknown)
            if volatile:
                return (f"a DEFAULT calling {', '.join(volatile)}() (volatile, or not known to "
                        "dbkit to be otherwise)")
    return ""


def _unknown_functions(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, ast.FuncCall):
        parts = node.funcname or ()
        name = (parts[-1].sval or "") if parts else ""
        if name and name.lower() not in NON_VOLATILE:
            found.add(name)
    if isinstance(node, ast.Node):
        for attr in node:
            found |= _unknown_functions(getattr(node, attr))
    elif isinstance(node, tuple):
        for item in node:
            found |= _unknown_functions(item)
    return found


_TYPE_ALIASES = {"character varying": "varchar", "decimal": "numeric", "bit varying": "varbit",
                 "character": "bpchar", "char": "bpchar"}


def _col_type(tn: ast.TypeName | None) -> ColType:
    if tn is None or not tn.names:
        return ("", ())
    name = _last(tn.names)
    name = _TYPE_ALIASES.get(name, name)
    if tn.arrayBounds:
        name += "[]"
    mods = tuple(m.val.ival or 0 for m in tn.typmods or ()
                 if isinstance(m, ast.A_Const) and isinstance(m.val, ast.Integer))
    if tn.typmods and len(mods) != len(tn.typmods):
        return (name, (-1,))  # a modifier we cannot read: never judged a relaxation
    return (name, mods)


def _no_rewrite(old: ColType, new: ColType) -> bool:
    """PostgreSQL skips the rewrite (and the index rebuild) for these type changes."""
    (o, om), (n, nm) = old, new
    if old == new:
        return True
    if o in ("varchar", "varbit") and n == o:
        return not nm or (len(om) == 1 and nm[0] >= om[0])  # a longer (or no) limit
    if o in ("varchar", "text") and n in ("text", "varchar") and not nm:
        return True  # varchar(n) / varchar -> text, text -> varchar without a limit
    if o == "numeric" and n == "numeric":
        if not nm:
            return True  # unconstrained numeric holds any numeric(p, s)
        op, os_ = (om + (0,))[:2] if om else (0, 0)
        np_, ns = (nm + (0,))[:2]
        return bool(om) and ns == os_ and np_ >= op  # more digits, same scale
    return (o, n) == ("cidr", "inet") and not om and not nm


def _kind_word(kind: Any) -> str:
    return str(getattr(kind, "name", kind)).rsplit("_", 1)[-1]


def _last(names: Any) -> str:
    return (names[-1].sval or "") if names else ""


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, ast.Node):
        for attr in node:
            yield from _walk(getattr(node, attr))
    elif isinstance(node, tuple):
        for item in node:
            yield from _walk(item)


def _string_constants(stmt: Any) -> Iterator[str]:
    for node in _walk(stmt):
        if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String) and node.val.sval:
            yield node.val.sval


def _do_statements(stmt: ast.DoStmt) -> list[tuple[str, Any]]:
    """The SQL a PL/pgSQL DO block runs: its static statements, and EXECUTE of a string literal
    (or a concatenation of literals)."""
    import json

    import pglast

    body = lang = None
    for arg in stmt.args or ():
        if arg.defname == "as":
            body = getattr(arg.arg, "sval", None)
        elif arg.defname == "language":
            lang = getattr(arg.arg, "sval", None)
    if not body or (lang or "plpgsql").lower() != "plpgsql":
        return []
    try:
        tree = pglast.parse_plpgsql(f"DO $dbkit_do$ {body} $dbkit_do$")
    except Exception:  # noqa: BLE001 - an unparsable body fails on the server, not our concern
        return []
    queries: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key, val in node.items():
                if key == "PLpgSQL_stmt_execsql":
                    queries.append(val["sqlstmt"]["PLpgSQL_expr"]["query"])
                elif key == "PLpgSQL_stmt_dynexecute":
                    literal = _literal(val["query"]["PLpgSQL_expr"]["query"])
                    if literal:
                        queries.append(literal)
                visit(val)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(json.loads(json.dumps(tree)))
    found: list[tuple[str, Any]] = []
    for q in queries:
        try:
            found += [(q[raw.stmt_location or 0:], raw.stmt) for raw in pglast.parse_sql(q)]
        except Exception:  # noqa: BLE001 - PL/pgSQL variables in the text make it unparsable
            continue
    return found


def _literal(expr: str) -> str | None:
    """The value of a SQL expression made only of string literals and ||, else None."""
    import pglast

    try:
        (raw,) = pglast.parse_sql(f"SELECT {expr}")
    except Exception:  # noqa: BLE001
        return None
    stmt = raw.stmt
    target = (stmt.targetList[0].val if isinstance(stmt, ast.SelectStmt) and stmt.targetList
              else None)

    def value(node: Any) -> str | None:
        if isinstance(node, ast.A_Const) and isinstance(node.val, ast.String):
            return node.val.sval
        if (isinstance(node, ast.A_Expr) and node.name and _last(node.name) == "||"):
            left, right = value(node.lexpr), value(node.rexpr)
            return left + right if left is not None and right is not None else None
        return None

    return value(target)
