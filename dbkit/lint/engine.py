"""``dbkit lint``: find statements in migration files that are unsafe on a live database.

Files are parsed with pglast, which embeds PostgreSQL's own parser, so the linter sees exactly
the statements the server will run. Only two things are read from comments, as text: yoyo's
``-- transactional: false`` header directive, and ``-- dbkit: ignore RULE-ID[, RULE-ID]``, which
silences the statement it sits in or above (or a trailing comment on the statement's last line).

Library API (used by ``dbkit migrate``): ``lint_file(path)`` and ``lint_paths(paths)`` return a
list of ``Finding``; an empty list means the files are safe to apply to a busy database.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dbkit.errors import ConfigError

_IGNORE = re.compile(r"--\s*dbkit:\s*ignore\s+([A-Za-z0-9_,\s-]+)")


@dataclass(frozen=True)
class Finding:
    rule: str
    path: str
    line: int
    message: str  # what happens on a live database
    fix: str  # the safe way to write it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.rule}] {self.message}\n    fix: {self.fix}"


def rules() -> list[dict[str, str]]:
    """Every rule: id, title and fix (for ``dbkit lint --rules`` and the docs)."""
    from dbkit.lint.rules import RULES

    return [{"id": r.id, "title": r.title, "fix": r.fix} for r in RULES.values()]


def is_transactional(text: str) -> bool:
    """yoyo runs a migration in one transaction unless its header says ``transactional: false``
    (read by the same parser the runner uses, so lint and migrate never disagree)."""
    from dbkit.migrate.files import header

    return header(text).get("transactional", "true").strip().lower() != "false"


def lint_sql(text: str, path: str = "<sql>", transactional: bool | None = None,
             earlier: Callable[[], dict[Any, str]] | None = None) -> list[Finding]:
    """Lint SQL text. ``transactional`` defaults to what the text's yoyo header says;
    ``earlier()`` gives the NOT VALID constraints that earlier migrations left to validate."""
    import pglast
    from pglast import parser

    from dbkit.lint.rules import RULES, Checker

    lines = _LineIndex(text)
    try:
        stmts = pglast.parse_sql(text)
    except parser.ParseError as exc:
        where = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else 0
        return [Finding("parse-error", path, lines.line(where),
                        f"cannot parse: {next(iter(exc.args), exc)}",
                        RULES["parse-error"].fix)]
    comments = [(t.start, text[t.start:t.end + 1]) for t in parser.scan(text)
                if t.name == "SQL_COMMENT"]
    checker = Checker(transactional=is_transactional(text) if transactional is None
                      else transactional)
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
        for name in bad:
            findings.append(Finding("bad-ignore", path, first,
                                    f"'-- dbkit: ignore {name}' names no rule",
                                    RULES["bad-ignore"].fix))
        for hit in checker.check(raw.stmt, start):
            if hit.rule in ignored:
                continue
            findings.append(Finding(hit.rule, path, lines.line(hit.location), hit.message,
                                    RULES[hit.rule].fix))
    return findings


def lint_file(path: str | Path) -> list[Finding]:
    """Lint one SQL migration file."""
    p = Path(path)
    if p.suffix != ".sql":
        raise ConfigError(f"{p} is not a .sql file; only SQL migrations can be linted",
                          hint="pass .sql files or a migrations directory")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p} does not exist", hint="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {p}: {exc.__class__.__name__}",
                          hint="migration files must be readable UTF-8") from None
    return lint_sql(text, str(path), earlier=functools.cache(lambda: _left_not_valid(p)))


def _left_not_valid(path: Path) -> dict[Any, str]:
    """NOT VALID constraints added, and not validated, by the migrations before ``path`` in its
    directory (yoyo's order: by file name)."""
    import pglast

    from dbkit.lint.rules import Checker

    left: dict[Any, str] = {}
    for f in sorted(path.parent.glob("*.sql")):
        if f.name >= path.name:
            break
        if f.name.endswith(".rollback.sql"):
            continue
        try:
            stmts = pglast.parse_sql(f.read_text(encoding="utf-8"))
        except Exception:  # an unparsable earlier file is reported when it is linted itself
            continue
        checker = Checker(transactional=False)
        checker.earlier = lambda: left
        for raw in stmts:
            for _hit in checker.check(raw.stmt, raw.stmt_location or 0):
                pass
        left.update(checker.not_valid)
    return left


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
    findings: list[Finding] = []
    for f in migration_files(paths):
        findings += lint_file(f)
    return findings


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
        for name in filter(None, (n.strip() for n in re.split(r"[,\s]+", m.group(1)))):
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


def gate(pending: Iterable[Any], allow_unsafe: bool, env: str, preview: bool = False
         ) -> list[str]:
    """``dbkit migrate``'s check of what is about to run (objects with a ``.path``): findings
    come back as warnings with ``--allow-unsafe`` or in development, else LintFindings.
    A ``preview`` (dry run) only reports what the real run would do."""
    from dbkit.errors import LintFindings

    findings = [f for m in pending if m.path.suffix == ".sql" for f in lint_file(m.path)]
    if not findings:
        return []
    allowed = allow_unsafe or env == "development"
    if allowed or preview:
        why = ("the real run would refuse without --allow-unsafe" if not allowed else
               "allowed by --allow-unsafe" if allow_unsafe else "allowed by DBKIT_ENV=development")
        return [f"unsafe on a live database ({why}): {f.path}:{f.line}: [{f.rule}] {f.message}"
                for f in findings]
    first = findings[0]
    more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
    raise LintFindings(
        f"refusing to migrate: {Path(first.path).name}:{first.line}: [{first.rule}] "
        f"{first.message}{more}", hint=f"{first.fix}; see dbkit lint; or pass --allow-unsafe")
