"""Migration files on disk: which directory, discovery, ordering, checksums, statements, and
the files ``dbkit new`` writes.

yoyo's rules are kept so ``yoyo apply`` and ``dbkit migrate`` see the same migrations in the
same order: a migration is a ``.sql`` file (``*.rollback.sql`` is its rollback), its id is the
file name without ``.sql``, order is by file name, then ``-- depends:`` headers. Statements are
split by yoyo's own reader (sqlparse), so both tools run exactly the same statements.

Discovery reads only each file's bytes and header lines, never parses SQL: ``dbkit status``
over 1000 migrations stays fast. SQL is parsed only for the migrations that will run.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dbkit.errors import ConfigError

if TYPE_CHECKING:
    from dbkit.settings import Settings

ROLLBACK_SUFFIX = ".rollback.sql"
_YOYO_TMP_PREFIX = "_tmp_yoyonew"  # yoyo's editor temp files (yoyo.scripts.newmigration)
_DIRECTIVE = re.compile(r"^\s*--\s*(transactional|depends)\s*:\s*(.*)$")
_COMMENT_OR_EMPTY = re.compile(r"^(\s*|\s*--.*)$")
_NUMBERED = re.compile(r"^(\d+)_")
_PACKAGE = Path(__file__).resolve().parent.parent  # dbkit/


def packaged_dir() -> Path:
    """The posts migrations that ship with dbkit: the repository's top-level ``migrations/``,
    which the wheel carries as ``dbkit/migrations`` (an editable install reads the checkout's)."""
    inside = _PACKAGE / "migrations"
    return inside if inside.is_dir() else _PACKAGE.parent / "migrations"


def migrations_dir(settings: Settings) -> Path:
    """Where migrations live: ``--migrations DIR`` / DBKIT_MIGRATIONS when given (an explicit
    choice wins), else ``./migrations`` when present, else the posts migrations shipped with
    dbkit (so dbkit works from any directory after a plain ``pip install``)."""
    if settings.migrations is not None:
        return settings.migrations
    local = settings.cwd / "migrations"
    if local.is_dir():
        return local
    return packaged_dir()


@dataclass(frozen=True)
class MigrationFile:
    id: str
    path: Path
    checksum: str  # sha256 of the content, line endings normalised (a CRLF checkout is no edit)
    rollback_path: Path | None
    depends: tuple[str, ...] = ()
    transactional: bool = True

    @property
    def hash(self) -> str:
        """yoyo's key for the migration: sha256 of the id (not of the content)."""
        return hashlib.sha256(self.id.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Statement:
    sql: str
    offset: int  # character offset of the statement in its file, for error positions


def checksum(data: bytes) -> str:
    return hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()


def header(text: str) -> dict[str, str]:
    """yoyo's directives: ``-- transactional: false`` / ``-- depends: a b`` in the leading
    comment block (yoyo.migrations.parse_metadata_from_sql_comments)."""
    directives: dict[str, str] = {}
    for line in text.splitlines():
        m = _DIRECTIVE.match(line)
        if m:
            key, value = m.groups()
            directives[key] = f"{directives[key]} {value}" if key in directives else value
        elif not _COMMENT_OR_EMPTY.match(line):
            break
    return directives


def discover(directory: Path) -> list[MigrationFile]:
    """The migrations in ``directory``, in the order yoyo applies them."""
    if not directory.is_dir():
        raise ConfigError(f"migrations directory {directory} does not exist",
                          hint="create it (dbkit new NAME), or set --migrations / DBKIT_MIGRATIONS")
    found: dict[str, MigrationFile] = {}
    try:
        paths = sorted(p for p in directory.iterdir() if p.is_file())
    except OSError as exc:
        raise ConfigError(f"cannot read migrations directory {directory}: {exc.strerror}") from None
    for path in paths:
        name = path.name
        if name.startswith(_YOYO_TMP_PREFIX) or name.endswith(ROLLBACK_SUFFIX):
            continue
        if path.suffix == ".py":
            raise ConfigError(f"{path}: dbkit runs SQL migrations only",
                              hint="rewrite it as NAME.sql with NAME.rollback.sql; if the "
                              "directory is another tool's (Alembic's), point dbkit at its own "
                              "with --migrations or DBKIT_MIGRATIONS")
        if path.suffix != ".sql":
            continue
        mid = path.stem
        if mid.startswith("post-apply"):
            raise ConfigError(f"{path}: yoyo post-apply hooks are not supported by dbkit",
                              hint="write a numbered migration instead")
        try:
            data = path.read_bytes()
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read migration {path}: {exc.__class__.__name__}",
                              hint="migration files must be readable UTF-8") from None
        directives = header(text)
        transactional = directives.get("transactional", "true").strip().lower()
        if transactional not in ("true", "false"):
            raise ConfigError(f"{path}: '-- transactional:' must be true or false")
        rollback = path.with_name(mid + ROLLBACK_SUFFIX)
        found[mid] = MigrationFile(
            id=mid, path=path, checksum=checksum(data),
            rollback_path=rollback if rollback.is_file() else None,
            depends=tuple(d for d in directives.get("depends", "").split() if d),
            transactional=transactional == "true")
    return _ordered(list(found.values()))


def _ordered(files: list[MigrationFile]) -> list[MigrationFile]:
    if not any(f.depends for f in files):
        return files
    from yoyo.topologicalsort import CycleError, topological_sort

    ids = {f.id for f in files}
    for f in files:
        missing = [d for d in f.depends if d not in ids]
        if missing:
            raise ConfigError(f"{f.path}: depends on unknown migration {missing[0]!r}")
    by_id = {f.id: f for f in files}
    graph = {f.id: set(f.depends) for f in files}
    try:
        return [by_id[i] for i in topological_sort([f.id for f in files], graph)]
    except CycleError as exc:
        raise ConfigError(f"circular '-- depends:' among migrations {exc.args[1]}") from None


def statements(path: Path) -> list[Statement]:
    """The statements yoyo would run for ``path``, each with its offset in the file."""
    from yoyo.migrations import read_sql_migration

    try:
        text = path.read_text(encoding="utf-8")
        _directives, _comment, stmts = read_sql_migration(str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read migration {path}: {exc.__class__.__name__}") from None
    out: list[Statement] = []
    pos = 0
    for stmt in stmts:
        found = text.find(stmt, pos)
        if found < 0:  # yoyo rewrote line endings; positions become statement-relative
            found = -1
        else:
            pos = found + len(stmt)
        out.append(Statement(stmt, found))
    return out


def position(path: Path, stmt: Statement, char_pos: int | None) -> str:
    """``file:line:column`` of PostgreSQL's 1-based character position inside ``stmt``."""
    if stmt.offset < 0:
        return f"{path.name} (statement: {stmt.sql.splitlines()[0][:60]})"
    offset = stmt.offset + (char_pos - 1 if char_pos else 0)
    text = path.read_text(encoding="utf-8")[:offset]
    line = text.count("\n") + 1
    col = offset - (text.rfind("\n") + 1) + 1
    return f"{path.name}:{line}:{col}"


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    if not s:
        raise ConfigError(f"migration name {name!r} has no letters or digits",
                          hint="e.g. dbkit new add_posts_slug")
    return s[:80]


def new_migration(directory: Path, name: str) -> tuple[Path, Path, bool]:
    """Write the next-numbered ``NNNN_name.sql`` and its ``.rollback.sql``.

    Returns (migration, rollback, created). A migration with the same name already present is
    returned as is (created=False), so running ``dbkit new NAME`` twice is harmless.
    """
    base = slug(name)
    directory.mkdir(parents=True, exist_ok=True)
    numbers: list[tuple[int, int]] = []
    for p in directory.glob("*.sql"):
        if p.name.endswith(ROLLBACK_SUFFIX):
            continue
        m = _NUMBERED.match(p.name)
        if m:
            numbers.append((int(m.group(1)), len(m.group(1))))
        if p.stem.split("_", 1)[-1] == base and m:
            return p, p.with_name(p.stem + ROLLBACK_SUFFIX), False
    number = max((n for n, _ in numbers), default=0) + 1
    width = max([4, *(w for _, w in numbers)])
    mid = f"{number:0{width}d}_{base}"
    path = directory / f"{mid}.sql"
    rollback = directory / f"{mid}{ROLLBACK_SUFFIX}"
    path.write_text(
        f"-- {mid}\n"
        "-- Runs in one transaction. For CREATE INDEX CONCURRENTLY add a line\n"
        "-- '-- transactional: false' at the top and make every statement re-runnable.\n\n")
    rollback.write_text(f"-- Undoes {mid} (dbkit rollback).\n\n")
    return path, rollback, True
