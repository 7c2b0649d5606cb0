"""A warm pool of clones: made ahead in background threads, handed out on request.

A clone costs a ``CREATE DATABASE … TEMPLATE``: tens of milliseconds on an fsync-off server,
hundreds on a durable one, where the disk sets the pace. A test that does its own work for a
while leaves time to make the next clones, and several clones in flight at once overlap the
disk's waits, so a test finds its database waiting instead of paying for it.

The pool belongs to one ``CloneSession`` (one process or xdist worker). Its threads each hold
their own admin connection, and on it the session's token lock in shared mode, so a killed
run's clones, even one whose ``CREATE DATABASE`` was still running, are collected only once
every session of that run is gone (``dbkit.testdb.clones.collect_stale``).

What it holds is bounded (the budget, ``budget``): at most ``size`` clones ready or being made;
used clones waiting to be dropped take precedence over new ones once there are ``size`` of them.
Within that, how many it keeps ready follows demand: about as many as are used while one clone
is being made, plus a margin, and never more than the tests still to come ask for.

It never hands out a clone of a stale template: ``invalidate`` (called when the session finds
the migration files changed, or the template gone) moves every clone of the old template to
the drop queue, and clones still being made from it go there when they land.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from dbkit import pg
from dbkit.db import connect
from dbkit.errors import ConfigError

if TYPE_CHECKING:
    import psycopg

    from dbkit.settings import Settings
    from dbkit.urls import DbURL

log = logging.getLogger("dbkit")

# The run-wide budget of pool=auto, split between xdist workers (each at least the minimum):
# clones ready or being made, and connections making them.
AUTO_READY = 8
AUTO_MAKERS = 4
MAX_MAKERS = 8  # past this, parallel clones only queue on the disk and the server's CPUs


def budget(setting: str | int | None, workers: int = 1) -> tuple[int, int]:
    """(clones ready or being made, maker threads) per worker for a ``dbkit_pool`` setting:
    ``auto`` (or unset) splits the run-wide budget between ``workers``; ``N`` is N per worker,
    made by up to N/2 threads; ``0`` turns the pool off."""
    text = str(setting).strip().lower() if setting is not None else "auto"
    workers = max(1, workers)
    if text in ("", "auto"):
        # rounded down: the run as a whole stays within the budget unless the minimum says not
        return max(2, AUTO_READY // workers), max(1, AUTO_MAKERS // workers)
    try:
        size = int(text)
    except ValueError:
        raise ConfigError(f"dbkit_pool must be 'auto' or a number of clones, not {text!r}",
                          hint="--dbkit-pool=0 turns the pool off") from None
    if size < 0 or size > 64:
        raise ConfigError(f"dbkit_pool must be between 0 and 64, not {size}",
                          hint="each ready clone is a copy of the template on the server's disk")
    return size, min(MAX_MAKERS, max(1, math.ceil(size / 2)))


class Pool:
    """Clones of ``template`` made ahead by ``makers`` threads; used clones dropped by them.

    With ``size=0`` nothing is made ahead and the threads only drop used clones."""

    def __init__(self, admin: DbURL, settings: Settings, *, key: pg.LockKey, template: str,
                 owner: str, new_name: Callable[[], str], size: int, makers: int,
                 demand: int | None = None) -> None:
        self.admin = admin
        self.settings = settings
        self.key = key
        self.owner = owner
        self.size = size
        self._new_name = new_name
        self._template = template
        self._gen = 0  # bumped by invalidate: clones of an older generation are never handed out
        self._cond = threading.Condition()
        self._ready: deque[str] = deque()
        self._making = 0
        self._dropping = 0
        self._to_drop: deque[str] = deque()
        self._leftovers: list[str] = []  # failed makes/drops: may exist, dropped again at close
        self._broken: Exception | None = None
        self._closing = False
        self._demand = demand  # hand-outs still to come, when the caller knows (None: unknown)
        self._clone_s: float | None = None  # moving averages: how long a clone takes …
        self._use_s: float | None = None  # … and how long a test keeps the pool waiting for work
        self._last_take: float | None = None
        self.stats = {"made": 0, "ready": 0, "waited": 0, "direct": 0, "dropped": 0,
                      "discarded": 0}
        self._threads = [threading.Thread(target=self._run, name=f"dbkit-pool-{i}", daemon=True)
                         for i in range(max(1, makers))]
        for t in self._threads:
            t.start()

    # -- the caller's side (the test's thread) -----------------------------------------------
    def take(self) -> str | None:
        """A ready clone of the current template, waiting for one being made if none is ready;
        None when there is none to wait for (the caller clones directly)."""
        now = time.monotonic()
        with self._cond:
            if self._last_take is not None:
                self._use_s = _average(self._use_s, now - self._last_take)
            if self._demand is not None:
                self._demand = max(0, self._demand - 1)
            if self._broken is not None:
                # say it once through the caller's direct clone (one clear error if the server
                # is gone), and let the threads try again after it
                log.debug("clone pool paused (%s); cloning directly", self._broken)
                self._broken = None
                self._cond.notify_all()
                name = None
            else:
                if not self._ready and self._making:
                    self.stats["waited"] += 1
                while not self._ready and self._making and self._broken is None:
                    self._cond.wait()
                name = self._ready.popleft() if self._ready else None
                self._cond.notify_all()  # room for the next one
            self.stats["ready" if name else "direct"] += 1
            self._last_take = time.monotonic()
            return name

    def give_back(self, name: str) -> None:
        """A used clone: dropped by the threads."""
        with self._cond:
            self._to_drop.append(name)
            self._cond.notify_all()

    def invalidate(self, template: str) -> None:
        """The template was rebuilt (or replaced by another run): clones of the old one go."""
        with self._cond:
            self._template = template
            self._gen += 1
            self.stats["discarded"] += len(self._ready)
            self._to_drop.extend(self._ready)
            self._ready.clear()
            self._broken = None
            self._cond.notify_all()

    def ready(self) -> int:
        with self._cond:
            return len(self._ready)

    def settle(self, timeout: float = 60.0) -> bool:
        """Wait until nothing is being made or dropped (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while ((self._making or self._dropping or self._to_drop or self._want_more())
                   and self._broken is None):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> list[str]:
        """Stop making, drop what is ready or used (in parallel, on the threads' connections),
        wait for the threads; returns names that may still exist, for the caller to drop."""
        with self._cond:
            self._closing = True
            self._to_drop.extend(self._ready)
            self._ready.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join()
        with self._cond:
            return sorted(set(self._leftovers) | set(self._to_drop))

    # -- the threads' side -------------------------------------------------------------------
    def _target(self) -> int:
        """How many clones to have ready or in flight now."""
        if self._clone_s is None or self._use_s is None:
            want = self.size  # nothing measured yet: fill up, the first tests are coming
        else:
            # as many as are used while one is being made, one ready, one for the jitter
            want = math.ceil(self._clone_s / max(self._use_s, 0.001)) + 2
        want = min(want, self.size)
        if self._demand is not None:
            want = min(want, self._demand)
        return want

    def _want_more(self) -> bool:
        return (not self._closing and self._broken is None
                and len(self._ready) + self._making < self._target())

    def _next_job(self) -> tuple[str, str, str, int] | None:
        with self._cond:
            while True:
                if self._closing and not self._to_drop and not self._making:
                    return None
                backlog = len(self._to_drop) >= max(1, self.size)
                if self._to_drop and (self._closing or backlog or not self._want_more()):
                    self._dropping += 1
                    return "drop", self._to_drop.popleft(), "", 0
                if self._want_more():
                    self._making += 1
                    name = self._new_name()
                    # counted before it exists, so close() drops it whatever happens
                    self._leftovers.append(name)
                    return "make", name, self._template, self._gen
                if self._closing and self._making:
                    # another thread's clone is landing: it comes back here to be dropped
                    self._cond.wait(0.05)
                    continue
                self._cond.wait()

    def _connect(self) -> psycopg.Connection:
        conn = connect(self.admin, self.settings, autocommit=True)
        try:
            pg.session_lock_shared(conn, self.key)  # the run is alive while this session is
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        try:
            while (job := self._next_job()) is not None:
                kind, name, template, gen = job
                try:
                    if conn is None or conn.closed or conn.broken:
                        conn = self._connect()
                    if kind == "make":
                        started = time.monotonic()
                        pg.clone_database(conn, template, name, self.owner)
                        self._landed(name, gen, time.monotonic() - started)
                    else:
                        pg.drop_database(conn, name)
                        with self._cond:
                            self._dropping -= 1
                            self.stats["dropped"] += 1
                            self._cond.notify_all()
                except Exception as exc:
                    self._failed(kind, name, exc)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def _landed(self, name: str, gen: int, seconds: float) -> None:
        with self._cond:
            self._making -= 1
            self._leftovers.remove(name)
            self.stats["made"] += 1
            self._clone_s = _average(self._clone_s, seconds)
            if gen == self._gen and not self._closing:
                self._ready.append(name)
            else:  # made from a template that has since been replaced, or nobody wants it now
                self._to_drop.append(name)
            self._cond.notify_all()

    def _failed(self, kind: str, name: str, exc: Exception) -> None:
        log.debug("clone pool: %s of %s failed (%s)", kind, name, exc)
        with self._cond:
            if kind == "make":
                self._making -= 1  # its name stays in _leftovers: it may exist after all
                self._broken = exc  # stop making until the caller's direct path has spoken
            else:
                self._dropping -= 1
                if name not in self._leftovers:
                    self._leftovers.append(name)
            self._cond.notify_all()


def _average(old: float | None, new: float, weight: float = 0.3) -> float:
    return new if old is None else old + weight * (new - old)
