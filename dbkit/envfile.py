""".env files: read as python-dotenv reads them, written back one key at a time.

dbkit writes a generated password to ``.env`` (``DATABASE_URL``, ``DBKIT_APP_URL``) and nowhere
else, so writing is careful:

- only the bytes of the one value change: every other line, comment, line ending (CRLF stays
  CRLF), ``export`` prefix, quoting style, inline comment and the final-newline state are kept;
- before anything is written, the new text is read back with python-dotenv's own parser: the
  key must hold exactly the new value and every other key exactly what it held, or nothing is
  written;
- a symlinked ``.env`` stays a symlink: its target is replaced, by rename in the target's own
  directory (a crash never leaves half a file), private to its owner (mode 0600);
- a file setting one of dbkit's keys twice is an error, not a guess (python-dotenv silently
  takes the last line, so editing the first would change nothing).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.parse import urlsplit

from dbkit.errors import ConfigError

log = logging.getLogger("dbkit")

Style = Literal["none", "single", "double"]

# A value made only of these reads the same through python-dotenv (no quote, backslash,
# whitespace, '#' or '{', so no comment, escape or ${...} expansion), Docker's --env-file
# (which keeps quotes as part of the value) and `cut -d= -f2-`: a percent-encoded URL does.
_BARE = re.compile(r"[A-Za-z0-9%:/@._~+\-?=&,;!*$()\[\]]*")
_NEWLINE = re.compile(r"\r\n|\n|\r")


def _is_dbkit_key(key: str) -> bool:
    """A key dbkit reads from .env (so a second line setting it is an error)."""
    return key == "DATABASE_URL" or key.startswith(("DBKIT_", "PG"))


def read(path: Path, required: bool = False) -> dict[str, str]:
    """The file's variables (none when it does not exist, unless ``required``).

    Raises ConfigError when it sets one of dbkit's keys on more than one line."""
    if not path.exists():
        if required:
            raise ConfigError(f"env file {path} does not exist", hint="check --env-file")
        return {}
    if not (path.is_file() or path.is_fifo()):
        return {}  # as python-dotenv does (a directory in the way is check_writable's business)
    from dotenv import dotenv_values

    try:
        text = path.read_text(encoding="utf-8")  # universal newlines, as python-dotenv opens it
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.__class__.__name__}") from None
    _refuse_duplicates(path, _entries(text))
    return {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}


def warn_unparsable(path: Path) -> None:
    """python-dotenv skips a line it cannot parse without a word; say which one, or a broken
    DATABASE_URL line reads as 'DATABASE_URL is not set'."""
    if not path.is_file():
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return  # read() has already said so
    for entry in _entries(text):
        if entry.error:
            log.warning("%s:%d: cannot parse this line; it is ignored", path, entry.line)


def check_writable(path: Path) -> None:
    """Fail before anything is created whose secret would then have nowhere to go."""
    target = _target(path)
    if target.exists() and not target.is_file():
        raise ConfigError(f"env file {path} is not a regular file",
                          hint="remove or rename it, or choose another with --env-file")
    # The file is replaced by rename, so its directory must take a new file; a read-only file
    # is refused too, as the owner's way of saying "do not touch".
    if (not target.parent.is_dir() or not os.access(target.parent, os.W_OK)
            or (target.exists() and not os.access(target, os.W_OK))):
        raise ConfigError(f"env file {path} cannot be written",
                          hint="make it writable, or choose another with --env-file")


def update(path: Path, key: str, value: str) -> bool:
    """Set ``key`` to ``value``, changing no other byte of the file.

    Returns False, writing nothing, when the file already sets exactly that value (it is still
    made private by ``protect``); True when it wrote. A symlink is followed: its target is
    replaced atomically, mode 0600. Raises ConfigError (never naming the value) when the file
    cannot be read or written, sets one of dbkit's keys twice, or cannot hold the value."""
    check_writable(path)
    target = _target(path)
    try:
        with _locked(target.parent):
            return _update(path, target, key, value)
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise ConfigError(f"cannot write env file {path}: {why}",
                          hint="make it a writable file, or choose another with --env-file"
                          ) from None


def protect(path: Path) -> bool:
    """Make the file private (mode 0600) when it holds a secret (a URL with a password, or a
    ``*PASSWORD*`` key with a value) and its group or others may read it. True when tightened.

    A file dbkit cannot chmod (someone else's) is left as it is, with a warning."""
    target = _target(path)
    try:
        st = target.stat()
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
            return False
        text = target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False  # nothing dbkit can judge; read() reports unreadable files
    if not any(_is_secret(e.key, e.value) for e in _entries(text)):
        return False
    try:
        os.chmod(target, 0o600)
    except OSError as exc:
        log.warning("env file %s holds a password and others may read it, but its mode cannot be"
                    " changed (%s); run: chmod 600 %s", path, exc.strerror, path)
        return False
    log.info("env file %s holds a password and others could read it: made it private (0600)",
             path)
    return True


# -- reading ---------------------------------------------------------------------------------
class _Entry(NamedTuple):
    """One statement as python-dotenv parses it."""

    key: str | None
    value: str | None
    line: int  # where the statement starts (python-dotenv's own count includes blank lines)
    error: bool


def _entries(text: str) -> list[_Entry]:
    """python-dotenv's own parse (the authority on what a file means) of ``text``, which must
    have universal newlines, as python-dotenv sees a file it opens."""
    from dotenv.parser import parse_stream

    found = []
    for b in parse_stream(io.StringIO(text)):
        lead = b.original.string[: len(b.original.string) - len(b.original.string.lstrip())]
        found.append(_Entry(b.key, b.value, b.original.line + len(_NEWLINE.findall(lead)),
                            b.error))
    return found


def _universal(text: str) -> str:
    """``text`` as Python's universal-newline reading (python-dotenv's) sees it."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _refuse_duplicates(path: Path, entries: list[_Entry]) -> None:
    lines: dict[str, list[int]] = {}
    for e in entries:
        if e.key is not None and _is_dbkit_key(e.key):
            lines.setdefault(e.key, []).append(e.line)
    for key, where in lines.items():
        if len(where) > 1:
            listed = ", ".join(map(str, where[:-1])) + f" and {where[-1]}"
            raise ConfigError(f"{path} sets {key} on lines {listed}; only the last counts",
                              hint=f"keep one {key} line in {path.name} and delete the others")


def _is_secret(key: str | None, value: str | None) -> bool:
    if not key or not value:
        return False
    if "PASSWORD" in key.upper():
        return True
    if "://" not in value:
        return False
    try:
        return bool(urlsplit(value).password)
    except ValueError:  # not a URL after all (a stray '[')
        return False


# -- writing ---------------------------------------------------------------------------------
def _target(path: Path) -> Path:
    """The file that holds the contents: a symlink's target (dangling or not), else ``path``."""
    return Path(os.path.realpath(path))


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One read-modify-write at a time per directory: two dbkit processes writing the same .env
    (parallel setups) would otherwise each write back the file they read, losing a key. The
    directory is locked, not the file, because the file is replaced by rename."""
    import fcntl

    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        fd = None  # a directory we may write but not read: go on unlocked, as before
    try:
        if fd is not None:
            with contextlib.suppress(OSError):  # a filesystem without locks: same
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _update(path: Path, target: Path, key: str, value: str) -> bool:
    from dotenv.variables import Literal as Plain
    from dotenv.variables import parse_variables

    if not all(isinstance(atom, Plain) for atom in parse_variables(value)):
        # python-dotenv expands ${NAME} in every quoting style; there is no escape for it.
        raise ConfigError(f"cannot write {key} to env file {path}: python-dotenv would expand"
                          " the ${...} in its value", hint="choose a value without ${...}")
    text = target.read_bytes().decode("utf-8") if target.exists() else ""
    entries = _entries(_universal(text))
    _refuse_duplicates(path, entries)
    mine = [e for e in entries if e.key == key]
    if mine and mine[-1].value == value:
        protect(path)  # nothing to write; a pre-existing world-readable file still gets fixed
        return False
    # What the file must mean afterwards: the same statements, the last one setting ``key``
    # (the one python-dotenv uses) now setting ``value``; or ``key`` appended.
    pairs = [(e.key, e.value) for e in entries if e.key is not None]
    last = max((i for i, (k, _) in enumerate(pairs) if k == key), default=None)
    if last is None:
        pairs.append((key, value))
    else:
        pairs[last] = (key, value)
    errors = sum(e.error for e in entries)
    spans = [s for s in _spans(text) if s.key == key]
    candidates = _rewrites(text, spans[-1], value) if spans else _appends(text, key, value)
    for candidate in candidates:
        got = _entries(_universal(candidate))
        if ([(e.key, e.value) for e in got if e.key is not None] == pairs
                and sum(e.error for e in got) == errors):
            _replace(target, candidate.encode("utf-8"))
            return True
    # Only seen when a line python-dotenv cannot parse leaves a quote open that the new line
    # would close (dbkit warned about that line when it read the file).
    raise ConfigError(f"cannot write {key} to env file {path} without changing how its other"
                      " lines read", hint="fix the line it cannot parse (an open quote), then"
                      " run again")


def _replace(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".env.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it the file
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_style(value: str) -> Style:
    """How a new line quotes ``value``: bare when every reader agrees on it, else quoted."""
    if _BARE.fullmatch(value):
        return "none"
    return "single" if _fits(value, "single") else "double"


def _fits(value: str, style: Style) -> bool:
    """Whether ``value`` can be written in ``style`` and read back exactly."""
    if style == "none":
        return _BARE.fullmatch(value) is not None
    if style == "single":
        # python-dotenv reads \\ and \' inside single quotes as escapes; a lone backslash before
        # anything else is kept. Line breaks would come back as \n whatever they were.
        return not (set(value) & {"'", "\r", "\n"} or "\\\\" in value or value.endswith("\\"))
    return True  # double quotes escape everything they need to (_render)


def _render(value: str, style: Style) -> str:
    if style == "none":
        return value
    if style == "single":
        return f"'{value}'"
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"')
               .replace("\n", "\\n").replace("\r", "\\r"))
    return f'"{escaped}"'


def _dominant_ending(text: str) -> str:
    endings = _NEWLINE.findall(text)
    # most common; a tie goes to the earlier in this order
    return max(("\n", "\r\n", "\r"), key=endings.count) if endings else "\n"


def _appends(text: str, key: str, value: str) -> list[str]:
    """New texts with ``key=value`` added at the end, best first (as for _rewrites, another
    quoting style may be needed after a quote a broken last line left open)."""
    ending = _dominant_ending(text)
    found = []
    for style in dict.fromkeys((_new_style(value), "single", "double")):
        if not _fits(value, style):
            continue
        line = f"{key}={_render(value, style)}"
        if not text:
            found.append(line + "\n")
        elif text.endswith(("\n", "\r")):
            found.append(text + line + ending)
        else:
            found.append(text + ending + line)  # the file had no final newline: it still has none
    return found


def _rewrites(text: str, s: _Span, value: str) -> list[str]:
    """New texts with ``s``'s value replaced, best first: its own quoting style and inline
    comment kept, then another style that can hold the value (a quote may pair up with one a
    broken line above left open), then the comment dropped too. The caller takes the first
    that reads back right."""
    styles: list[Style] = [st for st in dict.fromkeys(
        (s.style or _new_style(value), _new_style(value), "single", "double")) if _fits(value, st)]
    found: list[str] = []
    for style in styles:
        rendered = _render(value, style)
        if s.style is None:  # `KEY` with no `=`: insert `=value` after the key
            at, rest = s.key_end, s.key_end
            rendered = "=" + rendered
        else:
            at, rest = s.value_start, s.value_end
        # a bare value runs up to ` #`: keep a comment that touched it apart from it
        gap = " " if style == "none" and text[rest:rest + 1] == "#" else ""
        found.append(text[:at] + rendered + gap + text[rest:])
    found += [text[:s.key_end] + "=" + _render(value, style) + text[s.eol_start:]
              for style in styles]
    return found


# A mirror of python-dotenv's grammar (dotenv/parser.py), applied to the raw text (CRLF kept)
# to learn where each part of a statement sits; what the statement means is always taken from
# python-dotenv itself (_entries), and every edit is checked with it before it is written.
_LEAD = re.compile(r"\s*")
_EXPORT = re.compile(r"(?:export[^\S\r\n]+)?")
_QUOTED_KEY = re.compile(r"'[^']+'")
_BARE_KEY = re.compile(r"[^=\#\s]+")
_BLANKS = re.compile(r"[^\S\r\n]*")
_EQUALS = re.compile(r"=[^\S\r\n]*")
_SINGLE = re.compile(r"'((?:\\.|[^'\\])*)'", re.DOTALL)
_DOUBLE = re.compile(r'"((?:\\.|[^"\\])*)"', re.DOTALL)
_UNQUOTED = re.compile(r"[^\r\n]*")
_COMMENT = re.compile(r"(?:[^\S\r\n]*#[^\r\n]*)?")
_END = re.compile(r"[^\S\r\n]*(\r\n|\n|\r|$)")
_REST = re.compile(r"[^\r\n]*(?:\r|\n|\r\n)?")


@dataclass(frozen=True)
class _Span:
    """Where one statement's parts sit in the text (offsets)."""

    key: str
    key_end: int
    style: Style | None  # None: no `=` at all
    value_start: int  # the value's text, quotes included
    value_end: int
    eol_start: int  # the line break ending the statement (or the end of the text)


class _Unparsable(Exception):
    pass


def _spans(text: str) -> list[_Span]:
    """Every statement with a key, in order (a statement python-dotenv cannot parse is
    skipped as it skips it)."""
    found: list[_Span] = []
    pos = 1 if text.startswith("\ufeff") else 0  # python-dotenv drops a byte-order mark
    while pos < len(text):
        pos = _match(_LEAD, text, pos).end()
        if pos >= len(text):
            break
        try:
            span, pos = _statement(text, pos)
        except _Unparsable as bad:
            pos = _match(_REST, text, bad.args[0]).end()
            continue
        if span is not None:
            found.append(span)
    return found


def _match(regex: re.Pattern[str], text: str, pos: int) -> re.Match[str]:
    m = regex.match(text, pos)
    if m is None:
        raise _Unparsable(pos)
    return m


def _statement(text: str, pos: int) -> tuple[_Span | None, int]:
    """Parse one statement at ``pos`` as python-dotenv's parse_binding does."""
    pos = _match(_EXPORT, text, pos).end()
    if text[pos:pos + 1] == "#":
        key = None
    else:
        quoted = text[pos:pos + 1] == "'"
        m = _match(_QUOTED_KEY if quoted else _BARE_KEY, text, pos)
        key, pos = m.group(0)[1:-1] if quoted else m.group(0), m.end()
    key_end = pos
    pos = _match(_BLANKS, text, pos).end()
    style: Style | None = None
    value_start = value_end = pos
    if text[pos:pos + 1] == "=":
        equals = _match(_EQUALS, text, pos)
        pos = value_start = value_end = equals.end()
        first = text[pos:pos + 1]
        style = "none"
        if len(equals.group(0)) > 1 and first == "#":
            pass  # `KEY= # comment`: an empty value
        elif first in ("'", '"'):
            style = "single" if first == "'" else "double"
            pos = value_end = _match(_SINGLE if first == "'" else _DOUBLE, text, pos).end()
        elif first not in ("", "\n", "\r"):
            part = _match(_UNQUOTED, text, pos)
            bare = re.sub(r"\s+#.*", "", part.group(0)).rstrip()
            value_end, pos = pos + len(bare), part.end()
    pos = _match(_COMMENT, text, pos).end()
    end = _match(_END, text, pos)
    if key is None:
        return None, end.end()
    return _Span(key, key_end, style, value_start, value_end, end.start(1)), end.end()
