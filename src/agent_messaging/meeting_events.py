"""Meeting event handlers (``@sdk.register_event_handler(MeetingEvent.AGENT_SPOKE)``).

A process with event handlers LISTENs on ``amp_meeting_events``. Each hint makes it
read the events after its cursor from ``amp.meeting_events`` (via
``amp.meeting_events_after``) and call the handlers of each event's type, in seq
order. The cursor starts at the newest event when the relay starts.

Identity values are handed out before commit, so an event with a lower seq can
become visible after a higher one. The relay therefore keeps a *low-water mark*
(every seq up to it was handled) plus the set of handled seqs above it, and moves
the mark past a missing seq only once it has stayed missing for ``gap_timeout``
seconds (a rolled-back transaction leaves such a hole for good).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from . import content, queries, tasks
from .database import Database
from .dispatcher import AnyNotification, Dispatcher
from .models import MeetingEvent

log = logging.getLogger("agent_messaging.meeting_events")

EVENTS_CHANNEL = "amp_meeting_events"
#: ``async def handler(meeting_id, agent_external_id, data) -> None``
EventHandler = Callable[[UUID, str | None, dict[str, Any]], Awaitable[None]]


class EventRelay:
    """Reads meeting events after a cursor and runs the registered handlers."""

    def __init__(
        self,
        db: Database,
        dispatcher: Dispatcher,
        *,
        poll_interval: float,
        gap_timeout: float = 10.0,
    ) -> None:
        self._db = db
        self._dispatcher = dispatcher
        self._poll_interval = poll_interval
        self._gap_timeout = gap_timeout
        self.handlers: dict[MeetingEvent, list[EventHandler]] = {}
        self._woken = asyncio.Event()
        self._low = 0
        self._seen: set[int] = set()
        self._gap_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """LISTEN, set the cursor to the newest event, start the loop."""
        if self._task is not None:
            return
        await self._dispatcher.subscribe([EVENTS_CHANNEL], self._on_notify)
        self._dispatcher.add_catch_up(self._catch_up)
        self._low = int(await self._db.fetch_value(queries.MEETING_EVENTS_MAX_SEQ))
        self._task = asyncio.create_task(self._run(), name="amp-meeting-events")

    async def close(self) -> None:
        """Stop the loop."""
        await tasks.stop(self._task)
        self._task = None
        self._dispatcher.remove_catch_up(self._catch_up)
        await self._dispatcher.unsubscribe([EVENTS_CHANNEL], self._on_notify)

    def _on_notify(self, _channel: str, _notification: AnyNotification) -> None:
        self._woken.set()

    async def _catch_up(self) -> None:
        self._woken.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self._poll_interval)
            self._woken.clear()
            try:
                while await self._read_once():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading meeting events failed; retrying at the next poll")

    async def _read_once(self) -> bool:
        """Handle the events after the low-water mark; True if a full page was read."""
        limit = 500
        rows = await self._db.fetch(
            # data as text, decoded per event in _dispatch: one value psqlpy cannot
            # decode must not stop the relay
            queries.MEETING_EVENTS_AFTER,
            [self._low, limit],
        )
        for row in rows:
            seq = int(row["seq"])
            if seq in self._seen:
                continue
            self._seen.add(seq)
            await self._dispatch(row)
        self._advance()
        return len(rows) == limit

    def _advance(self) -> None:
        loop = asyncio.get_running_loop()
        while self._seen:
            if self._low + 1 in self._seen:
                self._low += 1
                self._seen.discard(self._low)
                self._gap_since = None
                continue
            # a hole below handled events: wait for it to commit, for a while
            if self._gap_since is None:
                self._gap_since = loop.time()
            if loop.time() - self._gap_since < self._gap_timeout:
                return
            self._low += 1
            self._gap_since = None

    async def _dispatch(self, row: dict[str, Any]) -> None:
        try:
            event = MeetingEvent(row["event_type"])
        except ValueError:
            return
        handlers = list(self.handlers.get(event, ()))
        if not handlers:
            return
        try:
            data = content.loads(row["data"])
        except content.UndecodableContent as exc:
            log.warning("meeting event %s cannot be decoded: %s", row["seq"], exc)
            data = {"error": str(exc)}
        for handler in handlers:
            try:
                await handler(UUID(str(row["meeting_id"])), row["agent_external_id"], data)
            except Exception:
                log.exception("meeting event handler %r failed on event %s", handler, row["seq"])


class EventHandlers:
    """The meeting event handlers of one SDK instance and the relay that runs them.

    Handlers can be registered before or after the start; the relay starts with the
    first handler of a started SDK. A failed relay start (a lost connection, say) is
    logged and raised by the next :meth:`ready`, which the meeting calls await, so
    it is never lost.
    """

    def __init__(self) -> None:
        self.handlers: dict[MeetingEvent, list[EventHandler]] = {}
        self._relay: EventRelay | None = None
        self._starting: asyncio.Task[None] | None = None

    def add(self, event: MeetingEvent, handler: EventHandler) -> None:
        """Call ``handler`` for every event of that type (after :meth:`start`)."""
        self.handlers.setdefault(event, []).append(handler)

    def start(self, db: Database, dispatcher: Dispatcher, poll_interval: float) -> None:
        """Start the relay in the background, if there are handlers and it is not
        running yet."""
        if self._relay is not None or not self.handlers:
            return
        self._relay = EventRelay(db, dispatcher, poll_interval=poll_interval)
        self._relay.handlers = self.handlers
        self._starting = asyncio.get_running_loop().create_task(self._relay.start())

        def done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.error("starting the meeting event relay failed: %r", task.exception())

        self._starting.add_done_callback(done)

    async def ready(self) -> None:
        """Wait until the relay (if handlers are registered) is listening; raises
        the error of its start if it failed."""
        task = self._starting
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        """Stop the relay."""
        await tasks.stop(self._starting)
        self._starting = None
        if self._relay is not None:
            with contextlib.suppress(Exception):
                await self._relay.close()
            self._relay = None
