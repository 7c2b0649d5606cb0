"""Synthetic rows for ``dbkit seed --users/--posts/--votes``, as ready-to-send COPY text.

Why text, built here: the server (foreign-key triggers, index upkeep) is the bottleneck of a
COPY, so the client must stay well under it; formatting whole batches with f-strings from
pre-escaped word pools costs less per row than ``write_row``'s per-value adaptation, and one
``getrandbits`` per row feeds every choice in it.

Determinism: every batch of ``BATCH`` rows has its own ``random.Random`` seeded with a string
(``seed:table:batch``; string seeds go through SHA-512, so they do not depend on
``PYTHONHASHSEED``). The same seed and counts give the same bytes on every run, and any batch
can be produced on its own (used to recognise a database already seeded with the same data).
Ids are ``first_id + index``; on an empty database ``first_id`` is 1.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

BATCH = 8192  # rows per batch: part of the determinism contract; changing it changes the data

# Fixed dates (not now()) so the data does not depend on the day it is generated.
START = datetime(2019, 1, 1, tzinfo=UTC)
END = datetime(2025, 1, 1, tzinfo=UTC)
SPAN = int((END - START).total_seconds())

_DAYS = [(START + timedelta(days=d)).strftime("%Y-%m-%d ") for d in range(SPAN // 86400 + 1)]
_HOURS = [f"{h:02d}:" for h in range(24)]
_MINSEC = [f"{m:02d}:{s:02d}+00" for m in range(60) for s in range(60)]

_FIRST = ("ada alan alice amir ana ben bruno carla chen chloe dan diego eva farah felix grace "
          "hana hugo ines ivan jack jana jin kai kim lara leo lina luca maya mei mia nadia nina "
          "noah omar oscar paula priya rafael rosa sam sara sofia tariq theo uma vera wei yara "
          "yusuf zoe").split()
_LAST = ("adams ali almeida baker bauer chen costa cruz dubois evans fischer garcia gomez "
         "hansen ito jensen kim kowalski lee lopez martin meyer moreau muller nguyen novak "
         "okafor olsen park patel perez petrov rossi sato schmidt silva singh smith suzuki "
         "tanaka taylor torres wagner wang weber wilson wong yamamoto young zhang").split()
_DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "test.example")

_T1 = ("How to", "Why you should", "When to", "Notes on how to", "Ten ways to", "Learning to",
       "A beginner's guide: how to", "Stop trying to", "What it takes to", "Lessons from trying to",
       "Ask HN: how do you", "Show HN: I managed to", "The right way to", "Do not", "Finally able to",
       "Tips to")
_T2 = ("tune", "index", "monitor", "migrate", "partition", "back up", "debug", "scale", "secure",
       "vacuum", "replicate", "benchmark", "refactor", "cache", "test", "deploy")
_T3 = ("a busy PostgreSQL table", "your first web app", "a legacy monolith", "slow queries",
       "a multi-tenant schema", "time series data", "a small team's stack", "JSON columns",
       "full text search", "background jobs", "a read replica", "connection pools",
       "a billing system", "foreign keys at scale", "an analytics pipeline", "a hobby project")
_T4 = ("", "", "", "", " in 2024", " without downtime", " on a budget", " (part 2)",
       " the boring way", " in production", " with plain SQL", " from scratch", " for fun",
       " step by step", " at work", " in one afternoon")

_SENTENCES = (
    "I spent the weekend measuring this and the results surprised me.",
    "The short version: measure first, then change one thing at a time.",
    "Most of the time went into waiting on locks, not into the work itself.",
    "We tried three approaches before settling on the simplest one.",
    "Here is the query plan before and after the change.",
    "If your table is small, none of this matters; past a few million rows it does.",
    "The documentation covers this, but it is easy to miss.",
    "Our on-call rotation is much quieter since we shipped it.",
    "Comments and corrections are welcome.",
    "A colleague pointed out an edge case that I had not considered.",
    "Rolling it back turned out to be harder than rolling it out.",
    "The numbers below come from a laptop, so treat them as relative.",
    "It took a day to write and a week to convince everyone.",
    "Nothing here is new, but I could not find it written down in one place.",
    "Update: several readers reported the same behaviour on other versions.",
    "Thanks to everyone who reviewed the first draft.",
    "We now run this check in CI on every pull request.",
    "Most of the speed-up came from deleting code.",
    "Be careful with defaults; they are tuned for a different workload.",
    "The fix itself was a single line.",
)


def copy_escape(value: str) -> str:
    """Escape for COPY's text format."""
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def _pool(rng: random.Random, size: int) -> list[str]:
    """``size`` post bodies of one to four sentences, pre-escaped."""
    out = []
    for _ in range(size):
        n = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
        out.append(copy_escape(" ".join(rng.sample(_SENTENCES, n))))
    return out


@dataclass(frozen=True)
class Plan:
    """What to generate: counts, seed and the id each table starts at."""

    users: int
    posts: int
    votes: int
    seed: int = 0
    first_user: int = 1
    first_post: int = 1

    def batches(self, table: str) -> int:
        n = {"users": self.users, "posts": self.posts}.get(table, self.posts)
        return -(-n // BATCH)


class Generator:
    """Batches of COPY text lines for users, posts and votes (see the module docstring)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._content = _pool(random.Random(f"{plan.seed}:content"), 1024)

    def _rng(self, table: str, batch: int) -> random.Random:
        return random.Random(f"{self.plan.seed}:{table}:{batch}")

    def user_time(self, n: int) -> int:
        """Seconds after START when user number ``n`` (0-based) signed up: users join in id
        order over the whole span, with a per-user jitter from an integer hash."""
        step = SPAN // max(self.plan.users, 1)
        return n * step + ((n * 2654435761) & 0xFFFF) * step // 0x10000

    # -- users ------------------------------------------------------------------------
    def users(self, batch: int) -> str:
        p = self.plan
        rng = self._rng("users", batch)
        bits = rng.getrandbits
        first, last, domains = _FIRST, _LAST, _DOMAINS
        nf, nl, nd = len(first), len(last), len(domains)
        days, hours, minsec = _DAYS, _HOURS, _MINSEC
        ut = self.user_time
        lines = []
        for n in range(batch * BATCH, min(p.users, (batch + 1) * BATCH)):
            x = bits(32)
            uid = p.first_user + n
            t = ut(n)
            s = t % 86400
            lines.append(f"{uid}\t{first[x % nf]}.{last[(x >> 8) % nl]}{uid}@{domains[(x >> 16) % nd]}"
                         f"\t!\t{days[t // 86400]}{hours[s // 3600]}{minsec[s % 3600]}\n")
        return "".join(lines)

    # -- posts ------------------------------------------------------------------------
    def posts(self, batch: int) -> str:
        p = self.plan
        rng = self._rng("posts", batch)
        bits = rng.getrandbits
        t1, t2, t3, t4, content = _T1, _T2, _T3, _T4, self._content
        days, hours, minsec = _DAYS, _HOURS, _MINSEC
        nusers, first_user, first_post = p.users, p.first_user, p.first_post
        step = SPAN // max(nusers, 1)
        lines = []
        for n in range(batch * BATCH, min(p.posts, (batch + 1) * BATCH)):
            # One draw, sliced: bits 0-29 time, 30-45 title, 46-55 body, 56-59 published,
            # 60-91 owner.
            x = bits(92)
            # Early users post more: the owner index is skewed towards low ids (r squared).
            r = x >> 60
            owner = (r * r * nusers) >> 64
            born = owner * step + ((owner * 2654435761) & 0xFFFF) * step // 0x10000  # user_time
            t = born + ((x & 0x3FFFFFFF) * (SPAN - born) >> 30)
            s = t % 86400
            lines.append(
                f"{first_post + n}\t{t1[(x >> 30) & 15]} {t2[(x >> 34) & 15]} "
                f"{t3[(x >> 38) & 15]}{t4[(x >> 42) & 15]}\t{content[(x >> 46) & 1023]}\t"
                f"{'f' if (x >> 56) & 15 == 0 else 't'}\t"
                f"{days[t // 86400]}{hours[s // 3600]}{minsec[s % 3600]}\t{first_user + owner}\n")
        return "".join(lines)

    # -- votes ------------------------------------------------------------------------
    def vote_share(self, batch: int) -> int:
        """Votes falling on the posts of ``batch``: an even split of the total, so each post
        batch can be generated on its own."""
        p = self.plan
        start, end = batch * BATCH, min(p.posts, (batch + 1) * BATCH)
        return p.votes * end // p.posts - p.votes * start // p.posts

    def votes(self, batch: int) -> str:
        """(post, user) pairs, unique by construction: each post draws distinct voters.
        Within a batch the count per post is skewed (exponential), a few posts get many."""
        p = self.plan
        rng = self._rng("votes", batch)
        start, end = batch * BATCH, min(p.posts, (batch + 1) * BATCH)
        left = self.vote_share(batch)
        nusers, first_user, first_post = p.users, p.first_user, p.first_post
        expo, sample = rng.expovariate, rng.sample
        everyone = range(nusers)
        lines = []
        for n in range(start, end):
            posts_left = end - n
            want = int(left / posts_left * expo(1.0) + 0.5)
            # Never leave more votes than the remaining posts can take (``nusers`` each).
            c = min(nusers, left, max(left - (posts_left - 1) * nusers, want))
            if not c:
                continue
            left -= c
            pid = first_post + n
            lines.extend(f"{pid}\t{first_user + u}\n" for u in sorted(sample(everyone, c)))
        return "".join(lines)

    def stream(self, table: str) -> Iterator[tuple[str, int]]:
        """(text, rows) per batch for ``table``."""
        p = self.plan
        make = {"users": self.users, "posts": self.posts, "votes": self.votes}[table]
        if table == "votes" and not p.votes:
            return
        for b in range(p.batches(table)):
            text = make(b)
            rows = (self.vote_share(b) if table == "votes"
                    else min({"users": p.users, "posts": p.posts}[table] - b * BATCH, BATCH))
            yield text, rows
