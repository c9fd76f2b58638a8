"""The turn sweeper: expires meeting turns on time, one per SDK process.

It hears of every turn of the meetings this process hosts or waits in (each meeting
notification carries the seconds left in the current turn, ``turn_seconds``), and
asks SQL for the earliest deadline of all (``amp.next_turn_deadline()``) at least
every ``poll_interval``; it sleeps until the earliest deadline it knows and then
calls ``amp.expire_turns()``. So a turn expires on time whoever waits, in whatever
state their wait began, and a meeting goes on even if the speaker's process is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING
from uuid import UUID

from . import queries, tasks
from .dispatcher import AnyNotification
from .notifications import MeetingChanged

if TYPE_CHECKING:
    from .context import Connected

log = logging.getLogger("agent_messaging.turn_sweeper")

#: slack added to a turn deadline before expiring it (clock granularity)
_DEADLINE_SLACK = 0.01


class TurnSweeper:
    """Expires meeting turns at their deadlines, for one SDK process.

    It sleeps until the earliest deadline it knows, then calls
    ``amp.expire_turns()`` (idempotent, safe from any number of processes). It
    learns deadlines from the notifications of the meetings it watches (those this
    process creates, starts or waits in: each carries ``turn_seconds``), from
    waiters' reads (:meth:`note`), and from SQL (``amp.next_turn_deadline()``), asked
    at least every ``poll_interval`` and after every expiry: the fallback that
    catches every other meeting.
    """

    def __init__(self, sdk: Connected) -> None:
        self._sdk = sdk
        self._wake = asyncio.Event()
        #: loop time of the earliest deadline known
        self._due: float | None = None
        self._watched: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        #: how many times this sweeper expired at least one turn (for tests)
        self.expired = 0

    def start(self) -> None:
        """Start sweeping (on the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="amp-turn-sweep")

    async def close(self) -> None:
        """Stop sweeping and stop watching meetings."""
        await tasks.stop(self._task)
        self._task = None
        for channel in list(self._watched):
            await self._unwatch_channel(channel)

    def note(self, seconds_left: float | None) -> None:
        """A turn deadline ``seconds_left`` from now (server's reckoning, read just now)."""
        if seconds_left is None:
            return
        at = asyncio.get_running_loop().time() + max(seconds_left, 0.0)
        if self._due is None or at < self._due:
            self._due = at
            self._wake.set()

    async def watch(self, meeting_id: UUID) -> None:
        """Hear of every turn of this meeting until it ends."""
        from .meeting_manager import meeting_channel  # loaded: this is a meeting's call

        channel = meeting_channel(meeting_id)
        if channel in self._watched:
            return
        self._watched.add(channel)
        await self._sdk.dispatcher.subscribe([channel], self._on_notify)

    async def unwatch(self, meeting_id: UUID) -> None:
        """Stop hearing of this meeting (it ended)."""
        from .meeting_manager import meeting_channel

        await self._unwatch_channel(meeting_channel(meeting_id))

    async def _unwatch_channel(self, channel: str) -> None:
        if channel in self._watched:
            self._watched.discard(channel)
            await self._sdk.dispatcher.unsubscribe([channel], self._on_notify, keep_listening=False)

    def _on_notify(self, channel: str, notification: AnyNotification) -> None:
        if not isinstance(notification, MeetingChanged):
            return
        if notification.status == "ended":
            if channel in self._watched:
                asyncio.get_running_loop().create_task(self._unwatch_channel(channel))
            return
        self.note(notification.turn_seconds)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        db = self._sdk.db
        while True:
            try:
                self.note(await db.fetch_value(queries.NEXT_TURN_DEADLINE))
            except Exception as exc:
                log.warning("reading the next turn deadline failed: %s", exc)
            poll_at = loop.time() + self._sdk.config.poll_interval
            while True:
                self._wake.clear()
                target = poll_at if self._due is None else min(poll_at, self._due + _DEADLINE_SLACK)
                now = loop.time()
                if now >= target:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), target - now)
            if self._due is not None and loop.time() >= self._due:
                self._due = None
                try:
                    if await db.fetch_value(queries.EXPIRE_TURNS):
                        self.expired += 1
                except Exception as exc:
                    log.warning("expiring turns failed: %s", exc)
