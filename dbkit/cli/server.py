"""dbkit setup, and dbkit server start|stop|status|url (dbkit's own local PostgreSQL)."""

from __future__ import annotations

import click

from dbkit.cli import cli, emit, settings


@cli.command()
@click.option("--no-seed", is_flag=True, help="Skip the sample data.")
@click.option("--local", is_flag=True, help="Use dbkit's own local PostgreSQL even if another answers.")
@click.option("--migrations", type=click.Path(file_okay=False), default=None,
              help="Migrations directory (DBKIT_MIGRATIONS).")
@click.option("--rotate-password", is_flag=True,
              help="Give an existing role a new password (e.g. after .env was lost): the one in "
              "DATABASE_URL, else a generated one written to .env.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
def setup(no_seed: bool, local: bool, migrations: str | None, rotate_password: bool,
          as_json: bool) -> None:
    """Create (if needed), migrate and seed: one command to a working database.

    Idempotent. If migrating or seeding fails, the role and database this run created are
    removed again; existing ones are never dropped."""
    from dbkit.prepare import setup as run_setup

    result = run_setup(settings(local=local, migrations=migrations), seed=not no_seed,
                       rotate=rotate_password)
    lines = [f"{s['step']:<8} {s['detail']}" for s in result.steps]
    lines.append("ready: " + ("done" if result.changed else "nothing changed, already up to date")
                 + f" ({result.seconds:.2f}s)")
    lines.append(f"DATABASE_URL={result.url}")
    lines.append(f"written to {result.env_file}" if result.env_file
                 else "DATABASE_URL comes from the environment")
    emit(result.as_dict(), as_json, "\n".join(lines))


@cli.group()
def server() -> None:
    """dbkit's own local PostgreSQL (data under DBKIT_DATA_DIR, default ./.dbkit)."""


def _local():  # -> LocalServer
    from dbkit.server import LocalServer

    s = settings()
    return LocalServer(s.data_path, s.pg_bin)


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
    else:
        text = (f"{'running' if st['running'] else 'stopped'}: PostgreSQL {st['major']}, "
                f"port {st['port']}, pid {st['pid']}, data in {st['data_dir']}")
    emit(st, as_json, text)


@server.command()
@click.option("--json", "as_json", is_flag=True)
def url(as_json: bool) -> None:
    """Print the local server's admin URL (password masked; it is in DATA_DIR/admin-password)."""
    srv = _local()
    admin = srv.admin_url()
    emit({"url": str(admin), "password_file": str(srv.password_file)}, as_json,
         f"{admin}\n(password in {srv.password_file})")
