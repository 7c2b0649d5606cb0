"""Reading seed files for ``dbkit seed --from PATH`` and the shipped sample: CSV, JSON and
JSON Lines, every row checked and typed here so an error names the file, line and column.
What the rows mean once in the database is ``dbkit.seed.merge``'s business.

Formats: CSV with a header row naming the columns; a JSON array of objects (file named after
its table) or one JSON object ``{"users": [...], "posts": [...], "votes": [...]}``; JSON Lines
(one object per line, file named after its table).

Posts name their owner by ``owner_id`` or ``owner_email``; votes name their post by
``post_id`` or (``post_owner_email``, ``post_title``) and their user by ``user_id`` or
``user_email``. Empty CSV cells and JSON nulls mean "not given". Naive timestamps are UTC.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dbkit.errors import DataError

TABLES: tuple[str, ...] = ("users", "posts", "votes")  # load order: parents first
EXTS = (".csv", ".json", ".jsonl", ".ndjson")
# column -> kind: id (positive bigint), key (non-empty text), body (text, may be empty),
# text (optional text), bool, ts (timestamp)
SPEC: dict[str, dict[str, str]] = {
    "users": {"id": "id", "email": "key", "password_hash": "text", "created_at": "ts"},
    "posts": {"id": "id", "title": "key", "content": "body", "published": "bool",
              "created_at": "ts", "owner_id": "id", "owner_email": "key"},
    "votes": {"post_id": "id", "post_owner_email": "key", "post_title": "key", "user_id": "id",
              "user_email": "key"},
}
# Each entry: alternatives, each a tuple of columns that together satisfy the need.
NEEDS: dict[str, list[tuple[tuple[str, ...], ...]]] = {
    "users": [(("email",),)],
    "posts": [(("title",),), (("content",),), (("owner_id",), ("owner_email",))],
    "votes": [(("post_id",), ("post_owner_email", "post_title")),
              (("user_id",), ("user_email",))],
}
_TRUE = {"true", "t", "yes", "y", "1", "on"}
_FALSE = {"false", "f", "no", "n", "0", "off"}


@dataclass
class Source:
    path: Path
    table: str | None  # None: one JSON object holding several tables
    kind: str  # csv | json | jsonl
    header: tuple[str, ...] = ()  # CSV: the header row, for "column 3 (email)"

    def where(self, line: int, column: str | None = None) -> str:
        if column is None:
            return f"{self.path}:{line}"
        if self.kind == "csv" and column in self.header:
            return f"{self.path}:{line}: column {self.header.index(column) + 1} ({column})"
        return f"{self.path}:{line}: field {column!r}"


def discover(paths: list[Path]) -> list[Source]:
    """The sources named by ``--from``: files, or the table-named files in directories."""
    out: list[Source] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in EXTS
                           and f.stem.lower() in TABLES)
            if not found:
                raise DataError(f"{p}: no users/posts/votes .csv, .json or .jsonl file in it",
                                hint="name the files users.csv, posts.csv, votes.csv (or .json)")
            out += [_source(f) for f in found]
        elif p.is_file():
            out.append(_source(p))
        else:
            raise DataError(f"{p}: no such file or directory", hint="check the --from path")
    return out


def _source(f: Path) -> Source:
    ext = f.suffix.lower()
    if ext not in EXTS:
        raise DataError(f"{f}: unsupported file type {ext or '(none)'!r}",
                        hint="use .csv, .json or .jsonl files")
    table = f.stem.lower() if f.stem.lower() in TABLES else None
    kind = {".csv": "csv", ".json": "json"}.get(ext, "jsonl")
    if table is None and kind != "json":
        raise DataError(f"{f}: cannot tell which table it is for",
                        hint="name it users, posts or votes (.csv/.json/.jsonl)")
    return Source(f, table, kind)


def estimate_rows(sources: list[Source]) -> int:
    """Lines in the files (cheap, for a progress bar's length): about one row per line."""
    total = 0
    for src in sources:
        with src.path.open("rb") as f:
            while chunk := f.read(1 << 20):
                total += chunk.count(b"\n")
    return total


# -- reading ------------------------------------------------------------------------------
def records(src: Source, table: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, {column: raw value}) for the rows of ``table`` in ``src``."""
    try:
        if src.kind == "csv":
            yield from _csv(src, table)
        elif src.kind == "jsonl":
            with src.path.open(encoding="utf-8-sig") as f:
                for n, text in enumerate(f, 1):
                    if not text.strip():
                        continue
                    try:
                        value = json.loads(text)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{src.path}:{n}: column {exc.colno}: invalid JSON: "
                                        f"{exc.msg}") from None
                    yield n, _obj(src, n, value)
        else:
            yield from _json(src, table)
    except json.JSONDecodeError as exc:
        raise DataError(f"{src.path}:{exc.lineno}: column {exc.colno}: invalid JSON: "
                        f"{exc.msg}") from None
    except UnicodeDecodeError:
        raise DataError(f"{src.path}: is not UTF-8 text") from None
    except OSError as exc:
        raise DataError(f"{src.path}: cannot read: {exc.strerror or exc}") from None


def _csv(src: Source, table: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with src.path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if not header:
                raise DataError(f"{src.path}:1: empty file, expected a header row naming the columns")
            src.header = tuple(h.strip().lower() for h in header)
            for i, name in enumerate(src.header, 1):
                if name not in SPEC[table]:
                    raise DataError(f"{src.path}:1: column {i} ({name or 'empty'}): not a {table} "
                                    f"column (expected some of: {', '.join(SPEC[table])})")
            for cols in NEEDS[table]:
                if not any(set(alt) <= set(src.header) for alt in cols):
                    raise DataError(f"{src.path}:1: missing column "
                                    + " or ".join("+".join(alt) for alt in cols))
            width = len(src.header)
            end = reader.line_num
            for row in reader:
                # A quoted field may span lines: name the line the record starts on.
                line, end = end + 1, reader.line_num
                if not row:
                    continue
                if len(row) != width:
                    raise DataError(f"{src.path}:{line}: {len(row)} fields, the header has {width}")
                yield line, dict(zip(src.header, row, strict=True))
        except csv.Error as exc:
            raise DataError(f"{src.path}:{reader.line_num}: malformed CSV: {exc}") from None


def _obj(src: Source, line: int, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{src.where(line)}: expected a JSON object, got {type(value).__name__}")
    return value


def _json(src: Source, table: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Walk the top-level array (or the table's array in a {"users": [...], ...} object)
    with raw_decode, so each record's line number is known."""
    text = src.path.read_text(encoding="utf-8-sig")
    dec = json.JSONDecoder()
    lines = _LineCounter(text)
    pos = _skip(text, 0)
    if src.table is not None:
        if not text.startswith("[", pos):
            raise DataError(f"{src.path}:{lines.at(pos)}: expected a JSON array of {table} rows")
        yield from _array(src, text, pos, dec, lines)
        return
    if not text.startswith("{", pos):
        raise DataError(f"{src.path}:{lines.at(pos)}: expected a JSON object with "
                        "users/posts/votes arrays")
    pos = _skip(text, pos + 1)
    while not text.startswith("}", pos):
        key, pos = dec.raw_decode(text, pos)
        if key not in TABLES:
            raise DataError(f"{src.path}:{lines.at(pos)}: unknown key {key!r} "
                            "(expected users, posts, votes)")
        pos = _skip(text, pos)
        if not text.startswith(":", pos):
            raise DataError(f"{src.path}:{lines.at(pos)}: invalid JSON: expected ':'")
        pos = _skip(text, pos + 1)
        if key == table:
            if not text.startswith("[", pos):
                raise DataError(f"{src.path}:{lines.at(pos)}: {key!r} must be an array")
            pos = yield from _array(src, text, pos, dec, lines)
        else:
            _, pos = dec.raw_decode(text, pos)
        pos = _skip(text, pos)
        if text.startswith(",", pos):
            pos = _skip(text, pos + 1)


def _array(src: Source, text: str, pos: int, dec: json.JSONDecoder, lines: _LineCounter
           ) -> Iterator[tuple[int, dict[str, Any]]]:
    pos = _skip(text, pos + 1)
    while not text.startswith("]", pos):
        line = lines.at(pos)
        value, pos = dec.raw_decode(text, pos)
        yield line, _obj(src, line, value)
        pos = _skip(text, pos)
        if text.startswith(",", pos):
            pos = _skip(text, pos + 1)
        elif not text.startswith("]", pos):
            raise DataError(f"{src.path}:{lines.at(pos)}: invalid JSON: expected ',' or ']'")
    return pos + 1


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


class _LineCounter:
    """Line number of an offset; offsets only grow, so counting is linear overall."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


# -- checking -----------------------------------------------------------------------------
def convert(src: Source, table: str, line: int, rec: dict[str, Any]) -> list[Any]:
    """The staging row for ``rec``: values typed, requirements checked (DataError otherwise)."""
    spec = SPEC[table]
    out: list[Any] = [line]
    for col in rec:
        if col not in spec:
            raise DataError(f"{src.where(line, col)}: not a {table} column "
                            f"(expected some of: {', '.join(spec)})")
    values = {col: _value(src, line, col, kind, rec.get(col)) for col, kind in spec.items()}
    for cols in NEEDS[table]:
        if not any(all(values[c] is not None for c in alt) for alt in cols):
            first = cols[0][0]
            raise DataError(f"{src.where(line, first)}: missing value (need "
                            + " or ".join("+".join(alt) for alt in cols) + ")")
    out += values.values()
    return out


def _value(src: Source, line: int, col: str, kind: str, raw: Any) -> Any:
    def bad(why: str) -> DataError:
        return DataError(f"{src.where(line, col)}: {why}")

    if isinstance(raw, str) and "\x00" in raw:
        raise bad("contains a NUL character")
    if raw is None or (isinstance(raw, str) and raw == "" and kind != "body"):
        return None
    if kind == "id":
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise bad(f"expected a positive integer, got {raw!r}")
        try:
            n = int(raw)
        except ValueError:
            raise bad(f"expected a positive integer, got {raw!r}") from None
        if not 0 < n < 2**63:
            raise bad(f"expected a positive integer, got {raw!r}")
        return n
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        low = str(raw).strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise bad(f"expected true or false, got {raw!r}")
    if kind == "ts":
        if not isinstance(raw, str):
            raise bad(f"expected an ISO 8601 timestamp, got {raw!r}")
        try:
            ts = datetime.fromisoformat(raw.strip())
        except ValueError:
            raise bad(f"expected an ISO 8601 timestamp (2024-05-01T12:00:00Z), got {raw!r}") from None
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    if not isinstance(raw, str):
        raise bad(f"expected text, got {raw!r}")
    if kind == "key" and not raw.strip():
        raise bad("is blank")
    return raw
