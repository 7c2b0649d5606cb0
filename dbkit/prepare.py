"""``dbkit setup``: create (if needed) → migrate → seed sample data, like Rails' db:prepare.

Idempotent: on an up-to-date database every step reports that it had nothing to do.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dbkit.db import admin_url
from dbkit.urls import DbURL

if TYPE_CHECKING:
    from dbkit.settings import Settings

DEFAULT_NAME = "posts"  # role and database when DATABASE_URL is unset


@dataclass
class SetupResult:
    url: str  # masked
    env_file: str | None
    changed: bool
    steps: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_app_url(admin: DbURL) -> DbURL:
    """Without DATABASE_URL: role and database 'posts' on the admin's server."""
    return DbURL(user=DEFAULT_NAME, host=admin.host, port=admin.port, dbname=DEFAULT_NAME,
                 params=tuple((k, v) for k, v in admin.params if k in ("sslmode", "sslrootcert")))


def setup(settings: Settings, *, seed: bool = True) -> SetupResult:
    from dbkit import migrate, provision
    from dbkit import seed as seeding

    started = time.perf_counter()
    admin = admin_url(settings)
    url = settings.app_url() if settings.database_url else default_app_url(admin)
    created = provision.create(settings, app_url=url, admin=admin)
    final = url
    if created.printed_url is None and created.env_file and not url.password:
        # create generated the password and wrote it to .env: read it back for the next steps
        from dbkit.settings import read_env_file

        final = DbURL.parse(read_env_file(settings.env_file)["DATABASE_URL"])
    app_settings = dataclasses.replace(settings, database_url=final.render(reveal=True))
    steps: list[dict[str, Any]] = [{
        "step": "create", "changed": bool(created.statements),
        "detail": ", ".join(f"created {c}" for c in created.created) or
        ("converged privileges" if created.statements else "role and database exist"),
    }]
    applied = migrate.migrate(app_settings)
    steps.append({"step": "migrate", "changed": bool(applied.applied),
                  "detail": f"applied {len(applied.applied)} migration(s)" if applied.applied
                  else "schema up to date"})
    if seed:
        seeded = seeding.seed_sample(app_settings)
        rows = sum(seeded.inserted.values())
        steps.append({"step": "seed", "changed": rows > 0,
                      "detail": f"inserted {rows} sample row(s)" if rows else "sample data present"})
    return SetupResult(url=str(final), env_file=created.env_file or
                       (str(settings.env_file) if settings.env_file.exists() else None),
                       changed=any(s["changed"] for s in steps), steps=steps,
                       seconds=round(time.perf_counter() - started, 3))
