"""Parse, build and mask PostgreSQL URLs.

Names in URLs are percent-decoded so any identifier PostgreSQL accepts (spaces, quotes,
unicode) can be named. Passwords never leave this module unmasked except through
``connect_kwargs`` (in-process, to the driver) and ``DbURL.render(reveal=True)`` (for .env).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from dbkit.errors import InvalidURL

SCHEMES = ("postgresql", "postgres")
MASK = "***"
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


@dataclass(frozen=True)
class DbURL:
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    params: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, url: str, what: str = "DATABASE_URL") -> DbURL:
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            # ValueError text may echo the URL (and its password): never include it.
            raise InvalidURL(f"{what} is not a valid URL ({_reason(exc)})") from None
        scheme = parts.scheme.split("+", 1)[0]
        if scheme not in SCHEMES:
            raise InvalidURL(
                f"{what} must start with postgresql:// (got {parts.scheme or 'no scheme'}://)"
            )
        if parts.fragment:
            raise InvalidURL(f"{what} must not contain a '#' fragment (percent-encode '#')")
        host = unquote(parts.hostname) if parts.hostname else None
        if parts.netloc.rpartition("@")[2].startswith("["):
            host = parts.netloc.rpartition("@")[2].split("]")[0][1:]
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if "/" in path:
            raise InvalidURL(f"{what} has a '/' in the database name (percent-encode it as %2F)")
        try:
            params = tuple(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
        except ValueError:
            raise InvalidURL(f"{what} has a malformed query string") from None
        for key, value in params:
            if key == "host" and host is None:
                host = value
            if key == "port" and port is None:
                try:
                    port = int(value)
                except ValueError:
                    raise InvalidURL(f"{what} has a non-numeric port") from None
        params = tuple((k, v) for k, v in params if k not in ("host", "port"))
        return cls(
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            host=host,
            port=port,
            dbname=unquote(path) if path else None,
            params=params,
        )

    def with_(self, **changes: object) -> DbURL:
        return replace(self, **changes)  # type: ignore[arg-type]

    def connect_kwargs(self, dbname: str | None = None) -> dict[str, str]:
        """Keyword arguments for ``psycopg.connect``; the password stays in-process."""
        kw: dict[str, str] = dict(self.params)
        for key, value in (("host", self.host), ("port", self.port), ("user", self.user),
                           ("password", self.password), ("dbname", dbname or self.dbname)):
            if value is not None:
                kw[key] = str(value)
        return kw

    def render(self, reveal: bool = False, scheme: str = "postgresql") -> str:
        auth = ""
        if self.user:
            auth = quote(self.user, safe="")
            if self.password is not None:
                auth += ":" + (quote(self.password, safe="") if reveal else MASK)
            auth += "@"
        hostpart = ""
        query = list(self.params)
        if self.host and self.host.startswith("/"):
            query.insert(0, ("host", self.host))  # unix socket directory
        elif self.host:
            hostpart = f"[{self.host}]" if ":" in self.host else quote(self.host, safe="")
        if self.port is not None:
            if hostpart:
                hostpart += f":{self.port}"
            else:
                query.append(("port", str(self.port)))
        db = "/" + quote(self.dbname, safe="") if self.dbname else ""
        qs = "&".join(f"{quote(k, safe='')}={quote(v, safe='/')}" for k, v in query)
        return f"{scheme}://{auth}{hostpart}{db}" + (f"?{qs}" if qs else "")

    def __str__(self) -> str:
        return self.render()


def mask_url(url: str) -> str:
    """Mask the password in any URL-ish string; unparsable input is masked entirely."""
    try:
        return DbURL.parse(url).render()
    except InvalidURL:
        return "<invalid URL>"


def mask_secrets(text: str) -> str:
    """Mask anything that looks like a password inside a URL, anywhere in a text (an error
    message may quote one the server or the driver echoed)."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def with_app(url: DbURL, name: str) -> DbURL:
    """``url`` with ``application_name`` set, unless the user chose one: what a session shows in
    pg_stat_activity (dbkit finds its own migration sessions by it)."""
    if any(k == "application_name" for k, _ in url.params):
        return url
    return url.with_(params=(*url.params, ("application_name", name)))


def _reason(exc: Exception) -> str:
    text = str(exc)
    return "port is not a number or out of range" if "Port" in text or "port" in text else "malformed"
