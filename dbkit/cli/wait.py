"""dbkit wait: until a server accepts connections (for CI service containers)."""

from __future__ import annotations

import click

from dbkit.cli.common import cli, emit, settings


@cli.command()
@click.option("--timeout", "timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def wait(timeout: float, as_json: bool) -> None:
    """Wait until the server accepts connections (for CI service containers).

    Waits for DBKIT_ADMIN_URL's server (or PG* variables', else DATABASE_URL's). Like
    pg_isready, no login is needed: exit 0 as soon as the server answers, exit 4 after the
    timeout. When the URL asks for a read-write server (target_session_attrs=read-write or
    primary, as HA URLs with several hosts do), a standby's answer does not count: dbkit logs
    in to tell, so a wrong password fails at once."""
    from dbkit import admin
    from dbkit.db import wait_ready

    s = settings()
    url = admin.wait_target(s)
    seconds = wait_ready(url, s, round(timeout * 1000))
    emit({"url": str(url), "seconds": seconds}, as_json,
         f"server at {url} accepts connections (waited {seconds:.2f}s)")
