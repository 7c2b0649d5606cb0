"""dbkit server start|stop|status|url: dbkit's own local PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from dbkit.cli.common import cli, emit, settings

if TYPE_CHECKING:
    from dbkit.server import LocalServer


@cli.group()
def server() -> None:
    """dbkit's own local PostgreSQL (data under DBKIT_DATA_DIR, default ./.dbkit)."""


def _local() -> LocalServer:
    from dbkit.admin import project_server

    return project_server(settings())


@server.command()
@click.option("--json", "as_json", is_flag=True)
def start(as_json: bool) -> None:
    """Initialise (first time) and start the local server; no-op when running."""
    srv = _local()
    started = srv.start()
    st = srv.status()
    emit(st | {"started": started}, as_json,
         f"{'started' if started else 'already running'}: PostgreSQL {st['major']} on "
         f"127.0.0.1:{st['port']} (data in {st['data_dir']})")


@server.command()
@click.option("--json", "as_json", is_flag=True)
def stop(as_json: bool) -> None:
    """Stop the local server (data is kept)."""
    stopped = _local().stop()
    emit({"stopped": stopped}, as_json, "stopped" if stopped else "not running")


@server.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Show whether the local server exists and runs, and where."""
    st = _local().status()
    if not st["initialized"]:
        text = f"no local server in {st['data_dir']} (dbkit server start creates one)"
    elif st["running"]:
        text = (f"running: PostgreSQL {st['major']}, port {st['port']}, pid {st['pid']}, "
                f"data in {st['data_dir']}")
    else:
        text = (f"stopped: PostgreSQL {st['major']}, port {st['port']} when running, data in "
                f"{st['data_dir']} (dbkit server start)")
    emit(st, as_json, text)


@server.command()
@click.option("--json", "as_json", is_flag=True)
def url(as_json: bool) -> None:
    """Print the local server's admin URL (password masked; it is in DATA_DIR/admin-password)."""
    srv = _local()
    admin = srv.admin_url()
    emit({"url": str(admin), "password_file": str(srv.password_file)}, as_json,
         f"{admin}\n(password in {srv.password_file})")
