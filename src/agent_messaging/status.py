"""``amp status`` and ``amp watch``: live inspection with plain SQL and LISTEN.

Status reads the ``amp.*`` views; watch LISTENs on the channel of every agent the
connection may act as (``amp.agent_channels()``) and on ``amp_meeting_events`` and
prints what happened, reading what each hint names through ``amp.get_message`` and
``amp.meeting_events_after``. Neither reads a table, so both work for an
organization's role and show that organization only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import queries
from .database import Database, Row
from .dispatcher import AnyNotification, Dispatcher
from .notifications import (
    DeliveryFinished,
    MeetingEventRecorded,
    MessageStored,
    SessionChanged,
    Unknown,
)

#: section name -> query over the inspection views
SECTIONS: dict[str, str] = {
    "conversations": queries.STATUS_CONVERSATIONS,
    "meetings": queries.STATUS_MEETINGS,
    "inboxes": queries.STATUS_INBOXES,
    "online": queries.STATUS_ONLINE,
    "failed_deliveries": queries.STATUS_FAILED_DELIVERIES,
}


async def collect(db: Database) -> dict[str, list[Row]]:
    """Every section of the status, as rows."""
    return {name: await db.fetch(query) for name, query in SECTIONS.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID):
        return str(value)
    return value


def to_json(status: dict[str, list[Row]]) -> str:
    """The status as a JSON document (``amp status --json``)."""
    plain = {
        k: [{c: _plain(v) for c, v in row.items()} for row in rows] for k, rows in status.items()
    }
    return json.dumps(plain, indent=2, default=str)


def safe(value: object) -> str:
    """``value`` as text fit for a terminal: control and format characters (escape
    sequences, bidi overrides, ...) are shown as ``\\xNN`` / ``\\uNNNN`` instead of
    being sent to the terminal. Agent ids and content are untrusted text."""
    text = str(value)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def render(status: dict[str, list[Row]], console: Console) -> None:
    """The status as rich tables. Every value is plain text (``Text``), never rich
    markup, and goes through :func:`safe`: an agent named ``[/oops]`` or holding
    escape sequences is shown as it is, harmlessly."""
    for name, rows in status.items():
        title = name.replace("_", " ")
        if not rows:
            console.print(f"[dim]{title}: none[/dim]")
            continue
        table = Table(title=title, title_justify="left")
        for column in rows[0]:
            table.add_column(column)
        for row in rows:
            table.add_row(*(Text("" if v is None else safe(_plain(v))) for v in row.values()))
        console.print(table)


class Watcher:
    """Prints a line for every message and meeting event as it happens."""

    def __init__(self, db: Database, dispatcher: Dispatcher, out: Callable[[str], None]) -> None:
        self._db = db
        self._dispatcher = dispatcher
        self._out = out
        self._channels: set[str] = set()
        self._queue: asyncio.Queue[AnyNotification] = asyncio.Queue()

    async def refresh_agents(self) -> None:
        """LISTEN on the channels of agents registered since the last refresh."""
        rows = await self._db.fetch(queries.AGENT_CHANNELS)
        fresh = [r["c"] for r in rows if r["c"] not in self._channels]
        if fresh:
            await self._dispatcher.subscribe(fresh, self._hint)
            self._channels.update(fresh)

    async def run(self, seconds: float | None = None, refresh: float = 2.0) -> None:
        """Watch for ``seconds`` (forever if ``None``)."""
        await self._dispatcher.subscribe(["amp_meeting_events"], self._hint)
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        await self.refresh_agents()
        self._out("watching (Ctrl-C to stop)")
        while deadline is None or loop.time() < deadline:
            wait = refresh if deadline is None else max(0.0, min(refresh, deadline - loop.time()))
            try:
                notification = await asyncio.wait_for(self._queue.get(), wait)
            except TimeoutError:
                await self.refresh_agents()
                continue
            with contextlib.suppress(Exception):
                await self._show(notification)

    def _hint(self, _channel: str, notification: AnyNotification) -> None:
        self._queue.put_nowait(notification)

    async def _show(self, n: AnyNotification) -> None:
        if isinstance(n, MessageStored):
            row = await self._db.fetch_one(queries.WATCH_MESSAGE, [n.message_id])
            more = f" (and {n.count - 1} more of one batch)" if n.count > 1 else ""
            self._out(
                f"message  {row['message_type']:<18} {safe(row['sender'] or 'system')} -> "
                f"{safe(row['recipient'])}: {_clip(row['content'])}{more}"
            )
        elif isinstance(n, DeliveryFinished):
            what = str(n.message_id) if n.message_id else f"{n.count} message(s)"
            self._out(f"delivery {n.status:<18} {what}")
        elif isinstance(n, SessionChanged):
            self._out(f"session  {n.status:<18} {n.session_id}")
        elif isinstance(n, MeetingEventRecorded):
            row = await self._db.fetch_one(queries.WATCH_MEETING_EVENT, [n.seq])
            said = f": {_clip(row['content'])}" if row["content"] is not None else ""
            self._out(
                f"meeting  {row['event_type']:<18} {safe(row['agent'] or '-')} "
                f"in {n.meeting_id}{said}"
            )
        elif isinstance(n, Unknown):
            self._out(safe(n.kind))
        else:
            self._out(safe(f"{n.kind:<8} {n.model_dump_json(exclude={'kind'})}"))


def _clip(text: str, width: int = 80) -> str:
    clipped = text if len(text) <= width else text[: width - 1] + "…"
    return safe(clipped)
