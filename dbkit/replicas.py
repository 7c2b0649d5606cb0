"""Streaming replication as dbkit sees it: whether a server is a standby, which replicas stream
from a primary and how far behind they are, and the wait for them to replay a commit.

The one home of the queries on ``pg_is_in_recovery()``, ``pg_stat_replication``,
``pg_replication_slots`` and WAL positions::

    in_recovery(conn) -> bool
    refuse_standby(conn, url, doing)                        raises ReadOnlyServer (exit 4)
    replicas(conn, lsn=None) -> list[Replica]               on a primary
    standby(conn) -> Standby                                on a standby
    idle_slots(conn) -> list[Slot]                          slots nobody streams from
    wait_for_replicas(url, settings, timeout_ms) -> ReplicaWait   raises ReplicasBehind (exit 4)

Only a primary's direct replicas are seen: a cascading replica streams from a standby and is
in that standby's ``pg_stat_replication``, not the primary's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from dbkit.db import connect, value
from dbkit.errors import PermissionDenied, ReadOnlyServer, ReplicasBehind
from dbkit.urls import with_app

if TYPE_CHECKING:
    import psycopg

    from dbkit.settings import Settings
    from dbkit.urls import DbURL

log = logging.getLogger("dbkit")

WAIT_APP = "dbkit (replica wait)"
_SHOWN = 3  # replicas named in a one-line error


def in_recovery(conn: psycopg.Connection[Any]) -> bool:
    """True on a standby (a server replaying WAL: hot standby, or one restoring an archive)."""
    # PostgreSQL 14+ reports in_hot_standby at login (and on promotion): no round trip, so the
    # no-op deploy gate stays at one query. A standby that is not hot takes no logins at all.
    reported = conn.info.parameter_status("in_hot_standby")
    if reported is not None:
        return reported == "on"
    return bool(value(conn, "SELECT pg_is_in_recovery()"))


def refuse_standby(conn: psycopg.Connection[Any], url: DbURL, doing: str) -> None:
    """Refuse (ReadOnlyServer, exit 4) before anything is attempted when ``conn`` reached a
    standby: its every write would fail half-way with a less helpful error."""
    if in_recovery(conn):
        raise ReadOnlyServer(f"cannot {doing}: the server at {url} is a standby (in recovery, "
                             "read-only); nothing was attempted")


@dataclass(frozen=True)
class Replica:
    """One streaming replica of a primary, as its ``pg_stat_replication`` row shows it."""

    name: str  # application_name: the standby's cluster_name, else "walreceiver"
    client: str | None  # client_addr; None over a Unix socket (or hidden)
    state: str | None  # startup, catchup, streaming; None: hidden from this role
    replay_lsn: str | None  # None until the standby first reports one
    behind_bytes: int | None  # WAL between replay_lsn and the position asked about
    replay_lag_s: float | None  # PostgreSQL's replay_lag; None once idle and caught up

    @property
    def hidden(self) -> bool:
        """Details visible only to superusers and members of pg_read_all_stats."""
        return self.state is None

    @property
    def caught_up(self) -> bool:
        return self.behind_bytes is not None and self.behind_bytes <= 0

    def label(self) -> str:
        return f"{self.name or '(no application_name)'} ({self.client or 'local socket'})"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def replicas(conn: psycopg.Connection[Any], lsn: str | None = None) -> list[Replica]:
    """The physical streaming replicas of the primary ``conn`` is on, and how many bytes each
    has still to replay up to ``lsn`` (default: the WAL written so far, as monitoring usually
    counts lag; ``sendable_lsn`` for a wait). Left out: base backups in progress and logical
    replication (it ships rows, not the schema)."""
    rows = conn.execute(
        "SELECT s.application_name, host(s.client_addr), s.state, s.replay_lsn::text,"
        " pg_wal_lsn_diff(coalesce(%s::pg_lsn, pg_current_wal_lsn()),"
        " s.replay_lsn)::bigint, extract(epoch FROM s.replay_lag)::float8"
        " FROM pg_stat_replication s WHERE s.state IS DISTINCT FROM 'backup'"
        " AND NOT EXISTS (SELECT FROM pg_replication_slots r"
        "                 WHERE r.active_pid = s.pid AND r.slot_type = 'logical')"
        " ORDER BY s.application_name, s.pid", (lsn,)).fetchall()
    return [Replica(*r) for r in rows]


def sendable_lsn(conn: psycopg.Connection[Any]) -> str:
    """Where the primary's WAL ends now, every commit made so far included, once it is flushed
    (only flushed WAL goes to replicas). Under synchronous_commit = off a commit's record may
    still sit in memory, and the WAL writer flushes only up to the last asynchronous commit or
    page boundary: another session's later records could stay unsent until the next one (15 s
    when the server is idle). Then a transaction with an ID and synchronous_commit = local
    flushes them now (a tiny commit record; it waits for no synchronous standby)."""
    lsn = str(value(conn, "SELECT pg_current_wal_insert_lsn()::text"))
    if not value(conn, "SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", (lsn,)):
        with conn.transaction():
            conn.execute("SELECT set_config('synchronous_commit', 'local', true),"
                         " pg_current_xact_id()")
    return lsn


@dataclass(frozen=True)
class Standby:
    """What a standby says about its own replay."""

    paused: bool  # pg_wal_replay_pause() was called
    receive_lsn: str | None  # None: not streaming (restoring from an archive)
    replay_lsn: str | None
    unreplayed_bytes: int | None  # received but not yet replayed
    last_replay_age_s: float | None  # since the last replayed transaction committed


def standby(conn: psycopg.Connection[Any]) -> Standby:
    found = conn.execute(
        "SELECT pg_is_wal_replay_paused(), pg_last_wal_receive_lsn()::text,"
        " pg_last_wal_replay_lsn()::text,"
        " pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint,"
        " extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8").fetchone()
    assert found is not None
    return Standby(*found)


@dataclass(frozen=True)
class Slot:
    """A replication slot no one streams from: it keeps WAL on the primary for its replica."""

    name: str
    kind: str  # physical or logical
    wal_status: str | None  # reserved, extended, unreserved, lost (None: no WAL reserved)
    retained_bytes: int | None

    @property
    def lost(self) -> bool:
        """The WAL its replica needs is gone: that replica must be rebuilt."""
        return self.wal_status == "lost"


def idle_slots(conn: psycopg.Connection[Any]) -> list[Slot]:
    rows = conn.execute(
        "SELECT slot_name, slot_type, wal_status,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
        " FROM pg_replication_slots WHERE NOT active ORDER BY slot_name").fetchall()
    return [Slot(*r) for r in rows]


# -- the wait -------------------------------------------------------------------------------
@dataclass
class ReplicaWait:
    """A finished wait: every replica had replayed ``lsn`` after ``waited_s``."""

    lsn: str
    replicas: list[Replica] = field(default_factory=list)
    waited_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"lsn": self.lsn, "waited_s": self.waited_s,
                "replicas": [r.as_dict() for r in self.replicas]}


def wait_for_replicas(url: DbURL, settings: Settings, timeout_ms: int, *,
                      done: str = "") -> ReplicaWait:
    """Wait until every streaming replica of the primary at ``url`` has replayed the WAL
    written so far (so whatever was committed before the call, e.g. migrations, is visible on
    each replica), at most ``timeout_ms`` (0: as long as it takes, as for the other
    durations). No replicas: returns at once.

    Raises ReplicasBehind (exit 4) naming the replicas still behind at the deadline, and
    PermissionDenied (exit 5) when this role may not see how far they are. ``done`` says what
    was committed before the wait, for those messages (it stays committed either way)."""
    lead = f"{done}, but " if done else ""
    start = time.monotonic()
    deadline = start + timeout_ms / 1000 if timeout_ms else None
    with connect(with_app(url, WAIT_APP), settings, autocommit=True) as conn:
        conn.prepare_threshold = None  # a pooler in transaction mode takes no prepares
        refuse_standby(conn, url, "wait for replicas")  # its position is its primary's
        lsn = sendable_lsn(conn)
        pause = 0.01
        while True:
            found = replicas(conn, lsn)
            if not found:
                log.info("no streaming replicas in pg_stat_replication of %s: nothing to wait "
                         "for", url)
                return ReplicaWait(lsn, [], round(time.monotonic() - start, 3))
            if any(r.hidden for r in found):
                raise PermissionDenied(
                    f"{lead}role {conn.info.user!r} may not see how far the {len(found)} "
                    "replica(s) in pg_stat_replication have replayed",
                    hint=f"as an admin: GRANT pg_read_all_stats TO {conn.info.user} (or "
                    "pg_monitor); it reads statistics only")
            behind = [r for r in found if not r.caught_up]
            if not behind:
                waited = round(time.monotonic() - start, 3)
                log.info("%d replica(s) replayed %s in %.3fs: %s", len(found), lsn, waited,
                         ", ".join(r.label() for r in found))
                return ReplicaWait(lsn, found, waited)
            left = pause if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise ReplicasBehind(f"{lead}{_lagging(behind, len(found))} had not replayed "
                                     f"{lsn} after {timeout_ms / 1000:g}s")
            time.sleep(min(pause, left))  # the last look lands on the deadline
            pause = min(pause * 2, 0.1)


def _lagging(behind: list[Replica], total: int) -> str:
    shown = [f"replica {r.label()}, "
             + (f"{r.behind_bytes} bytes behind" if r.behind_bytes is not None
                else f"{r.state}, no replay position yet") for r in behind[:_SHOWN]]
    if len(behind) > _SHOWN:
        shown.append(f"{len(behind) - _SHOWN} more")
    return f"{len(behind)} of {total} replica(s) (" + "; ".join(shown) + ")"
