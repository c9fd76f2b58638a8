"""Push delivery: runs this process's handlers for messages claimed in SQL.

The calls of ``sql/delivery.sql``: a process that registers a handler becomes a
worker (``amp.register_worker``), records the agents it serves
(``amp.serve_agents``), LISTENs on their channels, and loops:

    claim (amp.claim_deliveries, leased, SKIP LOCKED) -> run handlers concurrently
    -> amp.ack_delivery, or amp.fail_delivery with backoff -> wait for a hint.

The wait ends on a notification for a served agent, on a free handler slot, or at
the next retry or lease expiry the database knows of (``amp.next_delivery_at``),
clamped to ``poll_interval``: notifications are hints, the claim query is truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import TypeAdapter, ValidationError

from . import content, tasks
from .config import Config
from .database import Database, Row
from .dispatcher import AnyNotification, Dispatcher
from .exceptions import DeliveryError
from .models import MessageContext
from .notifications import MessageStored

log = logging.getLogger("agent_messaging.delivery")

Handler = Callable[[Any, MessageContext], Awaitable[Any]]
#: Called after a sync request's handler returned a non-None answer.
ReplyHook = Callable[[MessageContext, Any], Awaitable[None]]

PUSHED_TYPES = frozenset({"one_way", "sync_request", "meeting_invitation"})


@dataclass(frozen=True)
class Claimed:
    """A message leased to this worker for one delivery attempt."""

    id: UUID
    message_type: str
    content: Any
    metadata: dict[str, Any]
    session_id: UUID | None
    meeting_id: UUID | None
    attempts: int
    sender_external_id: str
    sender_name: str
    recipient_external_id: str
    recipient_name: str

    @classmethod
    def from_row(cls, row: Row) -> Claimed:
        return cls(
            id=UUID(str(row["id"])),
            message_type=row["message_type"],
            content=row["content"],
            metadata=row["metadata"] or {},
            session_id=UUID(str(row["session_id"])) if row["session_id"] else None,
            meeting_id=UUID(str(row["meeting_id"])) if row["meeting_id"] else None,
            attempts=row["attempts"],
            sender_external_id=row["sender_external_id"] or "system",
            sender_name=row["sender_name"] or "system",
            recipient_external_id=row["recipient_external_id"],
            recipient_name=row["recipient_name"],
        )

    def context(self) -> MessageContext:
        return MessageContext(
            message_id=self.id,
            sender_external_id=self.sender_external_id,
            sender_name=self.sender_name,
            recipient_external_id=self.recipient_external_id,
            recipient_name=self.recipient_name,
            message_type=self.message_type,
            session_id=self.session_id,
            meeting_id=self.meeting_id,
            requires_reply=self.message_type == "sync_request",
            is_meeting_message=self.meeting_id is not None,
            metadata=self.metadata,
            attempt=self.attempts,
        )


class DeliveryWorker:
    """Claims pushed messages for the agents whose handlers run in this process."""

    def __init__(
        self,
        db: Database,
        dispatcher: Dispatcher,
        config: Config,
        adapter: Callable[[], TypeAdapter[Any]],
        handlers: dict[str, Handler],
        reply_hook: ReplyHook | None = None,
    ) -> None:
        self._db = db
        self._dispatcher = dispatcher
        self._config = config
        self._adapter = adapter
        self._handlers = handlers
        self._reply_hook = reply_hook
        self._served: set[str] = set()
        self._channels: list[str] = []
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._serve_lock = asyncio.Lock()
        self._acks: list[UUID] = []
        self._ack_wake = asyncio.Event()
        self._ack_task: asyncio.Task[None] | None = None
        self._closing = False
        self.worker_id: UUID | None = None

    # -- lifecycle ---------------------------------------------------------

    async def serve(self, agent_external_ids: list[str]) -> None:
        """Serve these agents' handlers from this process (registers the worker
        on first use). Raises :class:`AgentNotFoundError` for unknown agents."""
        async with self._serve_lock:
            fresh = [a for a in agent_external_ids if a not in self._served]
            if not fresh:
                return
            if self.worker_id is None:
                row = await self._db.fetch_one(
                    "SELECT amp.register_worker($1, $2) AS id", [socket.gethostname(), os.getpid()]
                )
                self.worker_id = UUID(str(row["id"]))
                self._dispatcher.add_catch_up(self._catch_up)
                self._ack_task = asyncio.create_task(self._ack_loop(), name="amp-acks")
                self._tasks = [
                    asyncio.create_task(self._loop(), name="amp-delivery"),
                    self._ack_task,
                    asyncio.create_task(self._heartbeat(), name="amp-heartbeat"),
                ]
            await self._db.fetch("SELECT amp.serve_agents($1, $2)", [self.worker_id, fresh])
            rows = await self._db.fetch(
                "SELECT amp.agent_channel(a) AS channel FROM unnest($1::text[]) AS a", [fresh]
            )
            channels = [r["channel"] for r in rows]
            # LISTEN before the first claim: nothing sent from now on is missed
            await self._dispatcher.subscribe(channels, self._on_notification)
            self._channels += channels
            self._served.update(fresh)
            self._wake.set()

    async def close(self, grace: float = 5.0) -> None:
        """Stop claiming, let running handlers finish (up to ``grace`` seconds),
        and hand back unfinished claims."""
        acks = self._ack_task
        for task in self._tasks:
            if task is not acks:
                await tasks.stop(task)
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                await tasks.stop(task, patience=1.0)
        # the ack loop ends once it has committed every ack, so that unregistering
        # (which hands unacknowledged claims back) cannot cause a second delivery
        self._closing = True
        self._ack_wake.set()
        if acks is not None:
            try:
                await asyncio.wait_for(asyncio.shield(acks), grace)
            except Exception:
                await tasks.stop(acks)
        self._tasks = []
        self._ack_task = None
        if self._channels:
            await self._dispatcher.unsubscribe(self._channels, self._on_notification)
        self._dispatcher.remove_catch_up(self._catch_up)
        if self.worker_id is not None:
            with contextlib.suppress(Exception):
                await self._db.execute("SELECT amp.unregister_worker($1)", [self.worker_id])
            self.worker_id = None

    @property
    def served(self) -> frozenset[str]:
        """External ids of the agents this process serves."""
        return frozenset(self._served)

    # -- hints -------------------------------------------------------------

    def _on_notification(self, channel: str, notification: AnyNotification) -> None:
        if isinstance(notification, MessageStored) and notification.message_type in PUSHED_TYPES:
            self._wake.set()

    async def _catch_up(self) -> None:
        self._wake.set()

    # -- the loop ----------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            free = self._config.handler_concurrency - len(self._inflight)
            claimed = await self._claim(free) if free > 0 else 0
            if free > 0 and claimed == free:
                continue  # there may be more waiting
            if claimed or free == 0:
                # a delivery finishing wakes us; the next claim happens then, and the
                # hot path is spared the next_delivery_at query
                await self._sleep(self._config.poll_interval)
            else:
                await self._sleep(await self._idle_timeout())

    async def _claim(self, limit: int) -> int:
        try:
            rows = await self._db.fetch(
                "SELECT * FROM amp.claim_deliveries($1, $2, make_interval(secs => $3), $4)",
                [
                    self.worker_id,
                    limit,
                    self._config.delivery_lease,
                    self._config.delivery_max_attempts,
                ],
            )
        except Exception:
            log.exception("claiming deliveries failed; retrying after the poll interval")
            return 0
        for row in rows:
            task = asyncio.create_task(self._deliver(Claimed.from_row(row)))
            self._inflight.add(task)
            task.add_done_callback(self._finished)
        return len(rows)

    def _finished(self, task: asyncio.Task[None]) -> None:
        was_full = len(self._inflight) >= self._config.handler_concurrency
        self._inflight.discard(task)
        if was_full:
            # a slot is free again; otherwise new work announces itself by NOTIFY
            # and a failed delivery wakes the loop itself (to time its retry)
            self._wake.set()

    async def _idle_timeout(self) -> float:
        """Seconds until the next retry or lease expiry, clamped to the poll interval."""
        poll = self._config.poll_interval
        try:
            row = await self._db.fetch_one(
                "SELECT amp.next_delivery_at($1) AS at, now() AS now", [self.worker_id]
            )
        except Exception:
            return poll
        at: datetime | None = row["at"]
        if at is None:
            return poll
        until: float = (at - row["now"]).total_seconds()
        return max(0.0, min(poll, until))

    async def _sleep(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._config.heartbeat_interval)
            try:
                await self._db.execute("SELECT amp.heartbeat($1)", [self.worker_id])
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    # -- one delivery ------------------------------------------------------

    async def _deliver(self, claimed: Claimed) -> None:
        context = claimed.context()
        handler = self._handlers.get(claimed.recipient_external_id)
        if handler is None:  # the handler was removed: give the message back
            await self._fail(claimed, "no handler registered in this process", retry_in=0.0)
            return
        try:
            message = content.decode(self._adapter(), claimed.content)
        except ValidationError as exc:
            # retrying cannot make content fit the type: fail it now
            await self._fail(claimed, f"content does not fit the message type: {exc}", final=True)
            return
        try:
            answer = await handler(message, context)
            if answer is not None and context.requires_reply and self._reply_hook is not None:
                await self._reply_hook(context, answer)
        except Exception as exc:
            log.warning(
                "handler of %s failed on message %s (attempt %d): %r",
                claimed.recipient_external_id,
                claimed.id,
                claimed.attempts,
                exc,
            )
            await self._fail(
                claimed, f"{type(exc).__name__}: {exc}", retry_in=self._backoff(claimed)
            )
            return
        self._acks.append(claimed.id)
        self._ack_wake.set()

    async def _ack_loop(self) -> None:
        """Acknowledge in batches: whatever finished while the previous batch was
        being committed goes in the next one (group commit), so under load a commit
        covers many messages, and with one message it costs nothing extra."""
        while not (self._closing and not self._acks):
            await self._ack_wake.wait()
            self._ack_wake.clear()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        while self._acks:
            batch, self._acks = self._acks, []
            try:
                rows = await self._db.fetch(
                    "SELECT amp.ack_deliveries($1, $2) AS id", [self.worker_id, batch]
                )
            except Exception:
                # not acknowledged: the leases expire and the messages are delivered
                # again (at least once), so nothing is lost
                log.exception("acknowledging %d deliveries failed", len(batch))
                continue
            if len(rows) < len(batch):
                acked = {str(r["id"]) for r in rows}
                lost = [str(i) for i in batch if str(i) not in acked]
                log.warning("leases lost before the ack (delivered again elsewhere): %s", lost)

    def _backoff(self, claimed: Claimed) -> float:
        delay = self._config.delivery_backoff_base * 2 ** (claimed.attempts - 1)
        return float(min(delay, self._config.delivery_backoff_max))

    async def _fail(
        self, claimed: Claimed, error: str, retry_in: float = 0.0, final: bool = False
    ) -> None:
        max_attempts = claimed.attempts if final else self._config.delivery_max_attempts
        try:
            status = await self._db.fetch_value(
                "SELECT amp.fail_delivery($1, $2, $3, make_interval(secs => $4), $5)",
                [self.worker_id, claimed.id, error[:2000], retry_in, max_attempts],
            )
        except DeliveryError as exc:
            log.warning("could not record the failure of %s: %s", claimed.id, exc)
            return
        self._wake.set()  # recompute when to look again (the retry's available_at)
        if status == "failed":
            log.error(
                "message %s failed after %d attempts: %s", claimed.id, claimed.attempts, error
            )
