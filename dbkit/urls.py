"""Parse, build and mask PostgreSQL URLs.

Names in URLs are percent-decoded so any identifier PostgreSQL accepts (spaces, quotes,
unicode) can be named. Passwords never leave this module unmasked except through
``connect_kwargs`` (in-process, to the driver) and ``DbURL.render(reveal=True)`` (for .env).

A password counts wherever libpq would take it from: ``user:password@``, a ``password`` query
parameter, or a ``key=value`` connection string. ``parse`` reads all three into
``DbURL.password`` (so the password given is the password used), and one rule,
``mask_secrets``, hides all three in any text that leaves dbkit: rendered URLs, errors, logs.

What libpq or the driver would silently change, ``parse`` refuses instead (InvalidURL, exit 3):
control characters (urlsplit drops a newline, libpq truncates at NUL), percent-escapes that are
not UTF-8 (they would become U+FFFD), host name labels DNS cannot carry, impossible ports.
No message quotes the input: a mistyped URL may have its password anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from urllib.parse import quote, unquote, urlsplit

from dbkit.errors import InvalidURL

SCHEMES = ("postgresql", "postgres")
MASK = "***"

# A libpq keyword/value connection string starts with a keyword and '='; a URL never does
# (its scheme ends at ':').
_CONNINFO = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\s*=")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DNS_LABEL_MAX = 63  # octets, RFC 1035


def _any_case_or_escaped(word: str) -> str:
    """A pattern for ``word`` in a URL query key: any letter may be percent-encoded (the
    pattern is compiled case-blind, so hex digits and letters match in either case)."""
    return "".join(f"(?:{c}|%{ord(c.lower()):02x}|%{ord(c.upper()):02x})" for c in word)


# The one masking rule. Each alternative is one place a password travels:
#   scheme://user:SECRET@        up to the last '@' before a '/' or whitespace (libpq's
#                                userinfo ends at '@' or '/'; urllib's at the last '@')
#   ?password=SECRET, &pass%77ord=SECRET     up to the next '&', '#' or whitespace
#   password=SECRET, password = 'a b\' c'    libpq's keyword/value syntax (quotes, backslash
#                                escapes; an unclosed quote runs to the end); PGPASSWORD= too
_SECRET = re.compile(
    r"(?P<userinfo>://[^\s:/@]*:)[^\s/]*@"
    rf"|(?P<param>[?&]{_any_case_or_escaped('password')}=)[^\s&#]*"
    r"|(?P<keyword>(?<!\w)(?:pg)?password\s*=\s*)"
    r"(?:'(?:\\.|[^'\\])*(?:'|\Z)|(?:\\.|[^\s\\])*\\?)",
    re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class DbURL:
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    # An HA URL's further hosts (``h1:5432,h2:5433``), tried in order after ``host:port`` as
    # libpq does; ``target_session_attrs`` in ``params`` says which one to settle on.
    more_hosts: tuple[tuple[str | None, int | None], ...] = ()

    @classmethod
    def parse(cls, url: str, what: str = "DATABASE_URL") -> DbURL:
        """A ``postgresql://`` URL or a libpq ``key=value`` connection string; InvalidURL
        (naming ``what``, never quoting the text) for anything libpq would misread."""
        text = url.strip()
        _check_text(text, what)
        if _CONNINFO.match(text):
            return _checked(_from_conninfo(text, what), what)
        # urlsplit silently drops tabs and newlines, libpq stops at NUL: refuse them all first.
        bad = _CONTROL.search(text)
        if bad:
            code = f"%{ord(bad.group()):02X}"
            raise InvalidURL(f"{what} contains {_describe(bad.group())}, which a URL cannot hold",
                             hint=f"remove it (percent-encode it as {code} if it is part of "
                             "the password)")
        try:
            parts = urlsplit(text)
            if _is_multi_host(parts.netloc, parts.query):
                return _checked(_from_libpq_url(text, parts.scheme, what), what)
            port = parts.port
        except ValueError as exc:
            # ValueError text may echo the URL (and its password): never include it.
            if "port" in str(exc).lower():
                raise _bad_port(what) from None
            raise InvalidURL(f"{what} is not a valid URL (malformed)") from None
        scheme = parts.scheme.split("+", 1)[0]
        if scheme not in SCHEMES:
            raise InvalidURL(
                f"{what} must start with postgresql:// (got {parts.scheme or 'no scheme'}://)"
            )
        if parts.fragment:
            raise InvalidURL(f"{what} must not contain a '#' fragment (percent-encode '#')")
        host = _decode(parts.hostname, what, "host")
        if parts.netloc.rpartition("@")[2].startswith("["):
            host = parts.netloc.rpartition("@")[2].split("]")[0][1:]
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if "/" in path:
            raise InvalidURL(f"{what} has a '/' in the database name (percent-encode it as %2F)")
        password = _decode(parts.password, what, "password")
        params = _query(parts.query, what)
        given: set[str] = set()
        for key, value in params:
            if key == "host" and host is None:
                host = value
            if key == "port" and port is None:
                port = _port(value, what)
            if key == "password":
                given.add(value)
        if given:
            # Two different passwords: whichever dbkit picked, the user meant the other one.
            if len(given) > 1 or (password is not None and password not in given):
                where = "in user:password@ and in ?password=" if password is not None \
                    else "in two password= parameters"
                raise InvalidURL(f"{what} gives two different passwords ({where})",
                                 hint="give the password once, either as user:password@ or as "
                                 "?password=")
            password = given.pop()
        params = tuple((k, v) for k, v in params if k not in ("host", "port", "password"))
        return _checked(cls(
            user=_decode(parts.username, what, "role name") or None,
            password=password,
            host=host or None,
            port=port,
            dbname=_decode(path, what, "database name") or None,
            params=params,
        ), what)

    def with_(self, **changes: object) -> DbURL:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def hosts(self) -> tuple[tuple[str | None, int | None], ...]:
        """Every (host, port) libpq may try, in order: one for most URLs."""
        return ((self.host, self.port), *self.more_hosts)

    def each_host(self) -> tuple[DbURL, ...]:
        """One single-host URL per host of an HA URL (the URL itself when it has one host)."""
        return tuple(replace(self, host=h, port=p, more_hosts=()) for h, p in self.hosts)

    def connect_kwargs(self, dbname: str | None = None) -> dict[str, str]:
        """Keyword arguments for ``psycopg.connect``; the password stays in-process."""
        kw: dict[str, str] = dict(self.params)
        host: str | None = self.host
        port: str | None = None if self.port is None else str(self.port)
        if self.more_hosts:  # libpq's lists: comma-separated, an empty entry is the default
            host = ",".join(h or "" for h, _ in self.hosts)
            ports = [str(p) if p is not None else "" for _, p in self.hosts]
            port = ",".join(ports) if any(ports) else None
        for key, value in (("host", host), ("port", port), ("user", self.user),
                           ("password", self.password), ("dbname", dbname or self.dbname)):
            if value is not None:
                kw[key] = str(value)
        return kw

    def render(self, reveal: bool = False, scheme: str = "postgresql") -> str:
        """Always a ``postgresql://`` URL (whatever form was parsed); masked by the one rule
        unless ``reveal``."""
        auth = quote(self.user, safe="") if self.user else ""
        if self.password is not None:  # without a user too: libpq reads ':password@' so
            auth += ":" + quote(self.password, safe="")
        if auth:
            auth += "@"
        hostpart = ""
        query = list(self.params)
        if self.more_hosts:
            # libpq reads a socket directory in a host list percent-encoded (%2Frun%2F...).
            hostpart = ",".join(_host_text(h) + (f":{p}" if p is not None else "")
                                for h, p in self.hosts)
        elif self.host and self.host.startswith("/"):
            query.insert(0, ("host", self.host))  # unix socket directory
        elif self.host:
            hostpart = _host_text(self.host)
        if self.port is not None and not self.more_hosts:
            if hostpart:
                hostpart += f":{self.port}"
            else:
                query.append(("port", str(self.port)))
        db = "/" + quote(self.dbname, safe="") if self.dbname else ""
        qs = "&".join(f"{quote(k, safe='')}={quote(v, safe='/')}" for k, v in query)
        full = f"{scheme}://{auth}{hostpart}{db}" + (f"?{qs}" if qs else "")
        # Masking the rendered text (not building a masked one) keeps one rule for every form,
        # a password that reached ``params`` by hand included.
        return full if reveal else mask_secrets(full)

    def __str__(self) -> str:
        return self.render()


def mask_url(url: str) -> str:
    """Mask the password in any URL-ish string; unparsable input is masked entirely."""
    try:
        return DbURL.parse(url).render()
    except InvalidURL:
        return "<invalid URL>"


# SQL's own form, ``PASSWORD 'SECRET'`` (CREATE/ALTER ROLE): a query quoted in a message
# (a lock's blocker, say) may carry one.
_PASSWORD_LITERAL = re.compile(r"(\bpassword\s+)'(?:[^']|'')*'", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """Mask every password in a text, in each form libpq takes one (``user:SECRET@``,
    ``?password=SECRET``, ``password=SECRET``) and in SQL's ``PASSWORD 'SECRET'``: an error
    message may quote one the server or the driver echoed."""
    return _PASSWORD_LITERAL.sub(r"\1'***'", _SECRET.sub(_masked, text))


def _masked(m: re.Match[str]) -> str:
    if m.group("userinfo") is not None:
        return m.group("userinfo") + MASK + "@"
    return (m.group("param") or m.group("keyword")) + MASK


def with_app(url: DbURL, name: str) -> DbURL:
    """``url`` with ``application_name`` set, unless the user chose one: what a session shows in
    pg_stat_activity (dbkit finds its own migration sessions by it)."""
    if any(k == "application_name" for k, _ in url.params):
        return url
    return url.with_(params=(*url.params, ("application_name", name)))


def _host_text(host: str | None) -> str:
    if not host:
        return ""
    return f"[{host}]" if ":" in host else quote(host, safe="")


# -- parsing's parts ------------------------------------------------------------------------
def _is_multi_host(netloc: str, query: str) -> bool:
    """An HA URL: several hosts after the userinfo, or in a ``host=`` parameter."""
    if "," in netloc.rpartition("@")[2]:
        return True
    return any(k in ("host", "port") and "," in v for k, v in _query(query, "the URL"))


def _from_libpq_url(text: str, scheme: str, what: str) -> DbURL:
    """A URL with several hosts, read by libpq's own parser (urllib cannot split a host list);
    dbkit's checks run on its result as on any other URL."""
    if scheme.split("+", 1)[0] not in SCHEMES:
        raise InvalidURL(f"{what} must start with postgresql:// (got {scheme or 'no scheme'}://)")
    rest = text.split("://", 1)[1]
    _decode(rest, what, "URL")  # libpq would take escapes that are not UTF-8 as raw bytes
    return _from_libpq("postgresql://" + rest, what, form="URL")


def _check_text(text: str, what: str) -> None:
    """Bytes that are not UTF-8 (an environment variable's arrive as lone surrogates) would
    fail later, inside the driver, as a bug."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidURL(f"{what} holds bytes that are not UTF-8",
                         hint="write it in UTF-8; percent-encode special characters as their "
                         "UTF-8 bytes (é is %C3%A9)") from None
    if "\x00" in text:  # libpq would cut the string there, whatever form it has
        raise InvalidURL(f"{what} contains a NUL character", hint="remove it")


def _decode(value: str | None, what: str, part: str) -> str | None:
    """Percent-decoding that refuses escapes which are not UTF-8 (``errors='replace'``, the
    default, would silently make another name or password of them)."""
    if value is None:
        return None
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise InvalidURL(f"{what}: the {part} has percent-escapes that are not UTF-8",
                         hint="percent-encode each character as its UTF-8 bytes (é is %C3%A9)"
                         ) from None


def _query(query: str, what: str) -> tuple[tuple[str, str], ...]:
    """The query string as libpq reads it: '&'-separated ``key=value``, percent-decoded, and
    '+' a plus sign (not a space, as HTML forms have it: a password may hold one)."""
    out: list[tuple[str, str]] = []
    for piece in query.split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        name = _decode(key, what, "query string") or ""
        out.append((name, _decode(value, what, "password" if name == "password"
                                  else "query string") or ""))
    return tuple(out)


def _port(value: str, what: str) -> int:
    if not (value.isascii() and value.isdigit()):  # int() would take ' 5', '+5', '5_0', '٥'
        raise InvalidURL(f"{what} has a non-numeric port",
                         hint="give the port as digits, e.g. 5432")
    return int(value)


def _bad_port(what: str) -> InvalidURL:
    return InvalidURL(f"{what} has a port that is not a number from 1 to 65535",
                      hint="fix the port (PostgreSQL's default is 5432)")


def _from_conninfo(text: str, what: str) -> DbURL:
    return _from_libpq(text, what, form="key=value connection string")


def _from_libpq(text: str, what: str, form: str) -> DbURL:
    """A libpq ``key=value`` string or HA URL, read by libpq's own parser (so quoting, escapes
    and host lists mean what they mean to libpq). psycopg is imported only here: importing it
    takes longer than the rest of ``dbkit --help``."""
    hint = ("write key=value pairs separated by spaces, quoting values that hold spaces or "
            "quotes (password='a b\\' c'), or use postgresql://role:password@host:port/database"
            if form != "URL" else "write postgresql://role:password@host1:port1,host2:port2/"
            "database (percent-encode special characters)")
    try:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        raise InvalidURL(f"{what} is a {form} that needs psycopg and libpq to read",
                         hint="install psycopg, or use "
                         "postgresql://role:password@host:port/database") from None
    try:
        found = {k: str(v) for k, v in conninfo_to_dict(text).items() if v is not None}
    except ProgrammingError as exc:
        raise InvalidURL(f"{what} is not a valid {form} ({_conninfo_reason(exc)})",
                         hint=hint) from None
    hosts = found.pop("host", "").split(",")
    ports = [_port(p, what) if p else None for p in found.pop("port", "").split(",")]
    if len(ports) == 1:  # libpq: one port is every host's port
        ports *= len(hosts)
    if len(ports) != len(hosts):
        raise InvalidURL(f"{what} names {len(hosts)} hosts but {len(ports)} ports",
                         hint="give one port per host, or a single port for all of them")
    pairs = [(h or None, p) for h, p in zip(hosts, ports, strict=True)]
    return DbURL(user=found.pop("user", None) or None, password=found.pop("password", None),
                 host=pairs[0][0], port=pairs[0][1], dbname=found.pop("dbname", None) or None,
                 params=tuple(found.items()), more_hosts=tuple(pairs[1:]))


def _conninfo_reason(exc: Exception) -> str:
    """libpq's complaint in dbkit's words: its own text may quote a piece of the password."""
    text = str(exc)
    if "unterminated quoted string" in text:
        return "a quoted value is not closed"
    if "invalid connection option" in text:
        return "an unknown keyword"
    if 'missing "="' in text:
        return "a word without '='"
    return "malformed"


def _checked(url: DbURL, what: str) -> DbURL:
    """What every form must satisfy before anything connects with it."""
    for part, value in (("role name", url.user), ("database name", url.dbname),
                        *(("host", h) for h, _ in url.hosts)):
        bad = _CONTROL.search(value or "")
        if bad:  # a name holding a newline forges log lines and breaks terminals
            raise InvalidURL(f"{what}: the {part} contains {_describe(bad.group())}",
                             hint=f"remove it from the {part} (dbkit refuses control "
                             "characters there)")
    if "\x00" in (url.password or "") or any("\x00" in k + v for k, v in url.params):
        raise InvalidURL(f"{what}: the password or a parameter contains a NUL character, "
                         "which libpq cannot send (it would cut the value short)",
                         hint="remove it")
    if any(p is not None and not 0 < p < 65536 for _, p in url.hosts):
        raise _bad_port(what)
    for host, _ in url.hosts:
        host = host or ""
        if host.startswith("/") or ":" in host:  # a unix-socket directory, an IPv6 address
            continue
        if any(len(label.encode()) > _DNS_LABEL_MAX for label in host.split(".")):
            raise InvalidURL(f"{what}: a label of the host name (a part between dots) is "
                             f"longer than {_DNS_LABEL_MAX} bytes, more than DNS allows",
                             hint="check the host name (a unix-socket directory starts with "
                             "/: postgresql://role@/database?host=/run/postgresql)")
    return url


def _describe(char: str) -> str:
    names = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", "\x00": "a NUL"}
    return names.get(char, f"a control character (U+{ord(char):04X})")
