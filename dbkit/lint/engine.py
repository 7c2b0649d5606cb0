"""``dbkit lint``: find statements in migration files that are unsafe on a live database.

Files are parsed with pglast, which embeds PostgreSQL's own parser, so the linter sees exactly
the statements the server will run. Only two things are read from comments, as text: yoyo's
``-- transactional: false`` header directive, and ``-- dbkit: ignore RULE-ID[, RULE-ID]``, which
silences the statement it sits in or above (or a trailing comment on the statement's last line).

Library API (used by ``dbkit migrate``): ``lint_file(path)`` and ``lint_paths(paths)`` return a
list of ``Finding``; an empty list means the files are safe to apply to a busy database. A
``Linter`` is one run: each file parsed once, with one model per directory of what the earlier
migrations left (so linting grows with the number of files, not files x VALIDATEs).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbkit.errors import ConfigError

if TYPE_CHECKING:
    from dbkit.lint.rules import Schema

_IGNORE = re.compile(r"--\s*dbkit:\s*ignore(?:\[([A-Za-z0-9_,\s-]*)\]|\s+([A-Za-z0-9_,\s-]+))")


@dataclass(frozen=True)
class Finding:
    rule: str
    path: str
    line: int
    message: str  # what happens on a live database
    fix: str  # the safe way to write it
    severity: str = "error"  # "error" blocks dbkit migrate outside development; "warning" never
    column: int = 1  # 1-based, of the offending clause
    end_line: int = 0  # where the statement ends (0: unknown)
    end_column: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        tag = self.rule if self.severity == "error" else f"{self.rule}, warning"
        return f"{self.path}:{self.line}: [{tag}] {self.message}\n    fix: {self.fix}"


def rules() -> list[dict[str, str]]:
    """Every rule: id, title and fix (for ``dbkit lint --rules`` and the docs)."""
    from dbkit.lint.rules import RULES

    return [{"id": r.id, "title": r.title, "fix": r.fix, "severity": r.severity}
            for r in RULES.values()]


def is_transactional(text: str) -> bool:
    """yoyo runs a migration in one transaction unless its header says ``transactional: false``
    (read by the same parser the runner uses, so lint and migrate never disagree)."""
    from dbkit.migrate.files import header

    return header(text).get("transactional", "true").strip().lower() != "false"


def lint_sql(text: str, path: str = "<sql>", transactional: bool | None = None,
             earlier: Callable[[], Schema] | None = None,
             not_volatile: Callable[[set[str]], set[str]] | None = None) -> list[Finding]:
    """Lint SQL text. ``transactional`` defaults to what the text's yoyo header says;
    ``earlier()`` gives what earlier migrations left (NOT VALID constraints, column types);
    ``not_volatile(names)`` which of the function names the server knows are not volatile
    (without it, only the shipped table of built-ins counts)."""
    return _lint(text, path, transactional, earlier, not_volatile)[0]


def _lint(text: str, path: str, transactional: bool | None,
          earlier: Callable[[], Schema] | None,
          not_volatile: Callable[[set[str]], set[str]] | None = None
          ) -> tuple[list[Finding], Schema]:
    """The findings, and what the text leaves for the migrations after it: the one place a
    migration is parsed."""
    import pglast
    from pglast import parser

    from dbkit.lint.rules import RULES, Checker, Schema

    lines = _LineIndex(text)
    try:
        stmts = pglast.parse_sql(text)
    except parser.ParseError as exc:
        where = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        line, col = lines.position(where)
        return [Finding("parse-error", path, line,
                        f"cannot parse: {next(iter(exc.args), exc)}",
                        RULES["parse-error"].fix, "error", col, line, col)], Schema()
    tokens = list(parser.scan(text))
    comments = [(t.start, text[t.start:t.end + 1]) for t in tokens if t.name == "SQL_COMMENT"]
    checker = Checker(transactional=is_transactional(text) if transactional is None
                      else transactional, text=text, tokens=tokens,
                      token_starts=[t.start for t in tokens], not_volatile=not_volatile)
    if earlier is not None:
        checker.earlier = earlier
    findings: list[Finding] = []
    prev_end_line = 0
    for raw in stmts:
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(text)
        first, last = lines.line(start), lines.line(max(start, end - 1))
        # comments on lines after the previous statement's last line, up to this one's last
        ignored, bad = _ignores(comments, lines, prev_end_line + 1 if prev_end_line else 1, last,
                                start, end)
        prev_end_line = last
        end_line, end_col = lines.position(max(start, end - 1))
        for name in bad:
            findings.append(Finding("bad-ignore", path, first,
                                    f"'-- dbkit: ignore {name}' names no rule",
                                    RULES["bad-ignore"].fix, "error", lines.position(start)[1],
                                    end_line, end_col))
        for hit in checker.statement(raw.stmt, start, end):
            if hit.rule in ignored:
                continue
            rule = RULES[hit.rule]
            line, col = lines.position(hit.location)
            findings.append(Finding(hit.rule, path, line, hit.message, rule.fix, rule.severity,
                                    col, end_line, end_col))
    return findings, checker.left()


def _read(p: Path) -> str:
    if p.suffix != ".sql":
        raise ConfigError(f"{p} is not a .sql file; only SQL migrations can be linted",
                          hint="pass .sql files or a migrations directory")
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p} does not exist", hint="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {p}: {exc.__class__.__name__}",
                          hint="migration files must be readable UTF-8") from None


class Linter:
    """One lint run over any number of files. Each file is read and parsed once: a file's
    findings and what it leaves for later migrations come from the same pass, and each
    directory keeps one running model (``Schema``) of what its migrations, in yoyo's order,
    have left so far. (Re-reading the earlier files for every VALIDATE made linting grow with
    files x VALIDATEs.)"""

    def __init__(self, not_volatile: Callable[[set[str]], set[str]] | None = None) -> None:
        self._dirs: dict[Path, _Directory] = {}
        self.not_volatile = not_volatile

    def lint_file(self, path: str | Path) -> list[Finding]:
        p = Path(path)
        text = _read(p)
        folder = self._dirs.get(p.parent)
        if folder is None:
            folder = self._dirs[p.parent] = _Directory(p.parent)
        findings, left = _lint(text, str(path), None, lambda: folder.before(p.name),
                               self.not_volatile)
        folder.record(p.name, left)
        return findings


class _Directory:
    """A migrations directory's forward files, what each one leaves (parsed at most once), and
    the sum of those parts for the files before the one being linted, grown only forward."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.names = sorted(f.name for f in path.glob("*.sql")
                            if not f.name.endswith(".rollback.sql"))
        self.steps = set(self.names)
        self.left: dict[str, Schema] = {}
        self.sum = _empty_schema()
        self.upto = 0  # self.sum holds what self.names[:self.upto] left

    def before(self, name: str) -> Schema:
        """What the migrations sorted before ``name`` left (yoyo's order: by file name)."""
        i = bisect.bisect_left(self.names, name)
        if i < self.upto:  # asked out of order: add the parts up again (nothing is re-parsed)
            self.sum, self.upto = _empty_schema(), 0
        while self.upto < i:
            earlier = self.names[self.upto]
            if earlier not in self.left:
                self.left[earlier] = self._left_by(earlier)
            self.sum.add(self.left[earlier])
            self.upto += 1
        return self.sum

    def record(self, name: str, left: Schema) -> None:
        if name in self.steps:  # a rollback file linted by hand is no step in the order
            self.left.setdefault(name, left)

    def _left_by(self, name: str) -> Schema:
        try:
            text = (self.path / name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):  # reported when the file is linted itself
            return _empty_schema()
        return _lint(text, name, None, None)[1]  # a file's own part needs nothing earlier


def _empty_schema() -> Schema:
    from dbkit.lint.rules import Schema

    return Schema()


def lint_file(path: str | Path) -> list[Finding]:
    """Lint one SQL migration file (what earlier files in its directory left is taken into
    account)."""
    return Linter().lint_file(path)


def migration_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files to lint: each file given, and the forward ``*.sql`` migrations of each directory
    (``*.rollback.sql`` files are skipped there: undoing is destructive by design)."""
    files: list[Path] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            files += sorted(f for f in p.glob("*.sql") if not f.name.endswith(".rollback.sql"))
        elif p.exists():
            files.append(p)
        else:
            raise ConfigError(f"{p} does not exist", hint="check the path")
    return files


def lint_paths(paths: Iterable[str | Path]) -> list[Finding]:
    """Lint files and directories; findings in file order, then line order."""
    linter = Linter()
    return [f for path in migration_files(paths) for f in linter.lint_file(path)]


def _ignores(comments: list[tuple[int, str]], lines: _LineIndex, from_line: int, to_line: int,
             start: int, end: int) -> tuple[set[str], list[str]]:
    from dbkit.lint.rules import RULES

    ignored: set[str] = set()
    bad: list[str] = []
    for pos, comment in comments:
        line = lines.line(pos)
        if not (from_line <= line <= to_line) and not (start <= pos < end):
            continue
        m = _IGNORE.search(comment)
        if not m:
            continue
        listed = m.group(1) if m.group(1) is not None else m.group(2)
        for name in filter(None, (n.strip() for n in re.split(r"[,\s]+", listed))):
            if name in RULES:
                ignored.add(name)
            else:
                bad.append(name)
    return ignored, bad


class _LineIndex:
    """Character offset -> 1-based line number."""

    def __init__(self, text: str) -> None:
        self.starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    def line(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset)

    def position(self, offset: int) -> tuple[int, int]:
        """1-based (line, column)."""
        line = self.line(offset)
        return line, offset - self.starts[line - 1] + 1


def server_volatility(conn: Any) -> Callable[[set[str]], set[str]]:
    """Ask the server (a psycopg connection) which functions are not VOLATILE, for those the
    shipped table does not know (the application's own functions, an extension's). A name
    counts only if every function of that name the search_path can see is STABLE or
    IMMUTABLE (the linter does not resolve argument types). If the question fails, the answer
    is "none": the shipped table alone decides, as offline."""
    import psycopg

    known: dict[str, bool] = {}

    def not_volatile(names: set[str]) -> set[str]:
        ask = sorted({n.lower() for n in names} - set(known))
        if ask:
            try:
                rows = conn.execute(
                    "SELECT proname::text, bool_and(provolatile <> 'v') FROM pg_proc "
                    "WHERE proname = ANY(%s) AND pg_function_is_visible(oid) GROUP BY 1",
                    [ask]).fetchall()
            except psycopg.Error:
                rows = []
            known.update(dict.fromkeys(ask, False))
            known.update({name: bool(ok) for name, ok in rows})
        return {n for n in names if known.get(n.lower())}

    return not_volatile


def gate(pending: Iterable[Any], allow_unsafe: bool, env: str, preview: bool = False,
         conn: Any = None) -> list[str]:
    """``dbkit migrate``'s check of what is about to run (objects with a ``.path``): findings
    come back as warnings with ``--allow-unsafe`` or in development, else LintFindings.
    Findings of severity "warning" are only shown, never refuse the run.
    A ``preview`` (dry run) only reports what the real run would do. With ``conn`` (the
    migration's connection), the server says which functions in a DEFAULT are volatile."""
    from dbkit.errors import LintFindings

    linter = Linter(server_volatility(conn) if conn is not None else None)
    findings = [f for m in pending if m.path.suffix == ".sql"
                for f in linter.lint_file(m.path)]
    warnings = [f"lint warning (never blocks): {f.path}:{f.line}: [{f.rule}] {f.message}"
                for f in findings if f.severity != "error"]
    findings = [f for f in findings if f.severity == "error"]
    if not findings:
        return warnings
    allowed = allow_unsafe or env == "development"
    if allowed or preview:
        why = ("the real run would refuse without --allow-unsafe" if not allowed else
               "allowed by --allow-unsafe" if allow_unsafe else "allowed by DBKIT_ENV=development")
        return [f"unsafe on a live database ({why}): {f.path}:{f.line}: [{f.rule}] {f.message}"
                for f in findings] + warnings
    first = findings[0]
    more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
    raise LintFindings(
        f"refusing to migrate: {Path(first.path).name}:{first.line}: [{first.rule}] "
        f"{first.message}{more}", hint=f"{first.fix}; see dbkit lint; or pass --allow-unsafe")
