"""Retention: remove history older than a horizon (``sql/retention.sql``).

:func:`prune` drives the SQL batch functions: each batch is one statement, so one
short transaction that locks only old, settled rows (``SKIP LOCKED``), and live
traffic is never blocked behind it. What goes and what always stays is described
in ``sql/retention.sql`` and the README.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from . import queries
from .database import Database

#: Rows looked at (messages) or deleted (sessions) per batch; meetings go by fifty times fewer.
DEFAULT_BATCH_SIZE = 1000

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """Parse ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a sum such as ``1d12h``."""
    compact = text.strip().replace(" ", "")
    parts = _PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts).lower() != compact.lower():
        raise ValueError(
            f"not a duration: {text!r} (use a number and a unit s, m, h, d or w: '30d')"
        )
    return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in parts))


@dataclass
class PruneResult:
    """What one prune removed, and the horizon it used."""

    horizon: datetime
    messages: int = 0
    meetings: int = 0
    sessions: int = 0
    batches: int = 0


async def prune(
    db: Database,
    older_than: timedelta | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[PruneResult], None] | None = None,
) -> PruneResult:
    """Remove what is older than ``older_than`` (``None``: the database's default,
    ``amp.retention()``, 30 days unless the setting ``amp.retention`` says otherwise).

    Ended meetings first (with their participants, events and messages), then settled
    messages in ``seq`` order, then ended conversations left empty. ``on_batch`` is
    called after every batch with the running totals.
    """
    seconds = None if older_than is None else older_than.total_seconds()
    horizon: datetime = await db.fetch_value(queries.PRUNE_HORIZON, [seconds])
    result = PruneResult(horizon=horizon)

    def batch_done() -> None:
        result.batches += 1
        if on_batch is not None:
            on_batch(result)

    meetings_per_batch = max(1, batch_size // 50)
    while True:
        n = int(await db.fetch_value(queries.PRUNE_MEETINGS, [horizon, meetings_per_batch]))
        result.meetings += n
        batch_done()
        if n == 0:
            break
    after: int | None = 0
    while after is not None:
        row = await db.fetch_one(
            queries.PRUNE_MESSAGES,
            [horizon, batch_size, after],
        )
        result.messages += int(row["removed"])
        after = row["next_seq"]
        batch_done()
    while True:
        n = int(await db.fetch_value(queries.PRUNE_SESSIONS, [horizon, batch_size]))
        result.sessions += n
        batch_done()
        if n == 0:
            break
    return result
