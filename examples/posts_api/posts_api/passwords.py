"""Password hashes: scrypt from the standard library, so the example needs no native package.

A stored hash reads ``scrypt$<n>$<r>$<p>$<salt>$<key>`` (salt and key in base64), so its cost
travels with it and can be raised later without breaking the hashes already stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# scrypt's cost, OWASP's minimum for it: 16 MiB of memory and 45-60 ms of one core a hash on a
# 2-core machine (measured here; the first hash of a process is slower).
N, R, P = 2**14, 8, 1
_KEY_BYTES = 32
_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    key = _derive(password, salt, N, R, P)
    return "$".join(["scrypt", str(N), str(R), str(P), _b64(salt), _b64(key)])


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` gives ``stored``. Anything that is not one of our hashes (such as
    the sample data's ``!``) matches no password."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(key, validate=True)
        got = _derive(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(got, want)


def burn_time(password: str) -> None:
    """Spend what a verification spends, for an unknown email: the response time then does not
    tell which emails have an account."""
    _derive(password, b"\0" * 16, N, R, P)


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM,
                          dklen=_KEY_BYTES)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
