"""The one way dbkit shows an instant: ISO 8601 in UTC with a ``Z``, e.g.
``2026-12-01T07:09:21Z`` in text and ``2026-12-01T07:09:21.946300Z`` (with the fraction) in
``--json``, whether the instant came from yoyo (naive, in UTC) or from PostgreSQL (aware)."""

from __future__ import annotations

import datetime as dt


def iso(when: dt.datetime | None, *, fraction: bool = True) -> str | None:
    if when is None:
        return None
    if when.tzinfo is None:  # yoyo's applied_at_utc: naive, and UTC by its name
        when = when.replace(tzinfo=dt.UTC)
    when = when.astimezone(dt.UTC)
    return when.isoformat(timespec="microseconds" if fraction else "seconds").replace("+00:00",
                                                                                     "Z")
