"""Push delivery: runs this process's handlers for messages claimed in SQL.

The calls of ``sql/delivery.sql``: a process that registers a handler becomes a
worker (``amp.register_worker``), records the agents it serves
(``amp.serve_agents``), LISTENs on their channels, and loops:

    claim (amp.claim_deliveries, leased, SKIP LOCKED) -> run handlers concurrently
    (up to ``handler_concurrency``; up to ``delivery_prefetch`` more claimed messages
    wait in the process for a slot, so the next claim overlaps with running handlers)
    -> amp.ack_delivery, or amp.fail_delivery with backoff -> wait for a hint.

The wait ends on a notification for a served agent, on a free handler slot, or at
the next retry or lease expiry the database knows of (``amp.next_delivery_at``),
clamped to ``poll_interval``: notifications are hints, the claim query is truth.
A message sent from this process to an agent it serves wakes the loop at once
(:meth:`DeliveryWorker.poke`), without waiting for its NOTIFY to come back.

Direct delivery: once it serves its agents the worker is *present*
(``amp.hold_worker`` on its LISTEN connection, see :meth:`Dispatcher.hold`), and a
pushed message stored for one of them may be handed to it as it is stored: leased to
it, its hint carrying the content and the rest of what the handler needs. The worker
runs the handler from the hint, without a claim (a hint for another worker wakes
nothing). One that comes while every slot and the prefetch room are taken is handed
back (``amp.release_deliveries``) for any worker to claim; after the listener lost its
connection, the catch-up hands back whatever was handed to this worker and never seen,
before the worker is present again.

A running handler keeps its lease: every third of ``delivery_lease`` the worker
extends the leases of what it still holds (``amp.extend_leases``), so a slow handler
is never run a second time while its process is alive; a process that dies stops
extending and its leases expire as before. :meth:`DeliveryWorker.close` first
drains: what is claimable now is delivered and running handlers finish, up to
``shutdown_timeout``.
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

from . import content, queries, tasks
from .config import Config
from .database import Database, Row
from .dispatcher import AnyNotification, Dispatcher
from .exceptions import TRANSIENT_ERRORS, DeliveryError
from .models import MeetingInvitation, MessageContext
from .notifications import MessageStored

log = logging.getLogger("agent_messaging.delivery")

Handler = Callable[[Any, MessageContext], Awaitable[Any]]
#: Called after a sync request's handler returned a non-None answer; True if the
#: reply was stored, which settles the request's delivery in SQL (no ack is due).
ReplyHook = Callable[[MessageContext, Any], Awaitable[bool]]

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
    def from_hint(cls, hint: MessageStored) -> Claimed:
        """A message handed to this worker as it was stored (direct delivery)."""
        return cls(
            id=hint.message_id,
            message_type=hint.message_type,
            content=hint.content,
            metadata=hint.metadata or {},
            session_id=hint.session_id,
            meeting_id=hint.meeting_id,
            attempts=hint.attempt,
            sender_external_id=hint.sender or "system",
            sender_name=hint.sender_name or "system",
            recipient_external_id=hint.recipient or "",
            recipient_name=hint.recipient_name or "",
        )

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
        #: handlers running at once; claimed messages beyond that wait for a slot
        self._slots = asyncio.Semaphore(config.handler_concurrency)
        self._capacity = config.handler_concurrency + config.delivery_prefetch
        # claim again once the prefetched messages have all started (half the room
        # is free); without prefetch, as soon as a slot is free
        self._refill_at = max(
            self._capacity - max(1, config.delivery_prefetch), self._capacity // 2
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._serve_lock = asyncio.Lock()
        self._acks: list[UUID] = []
        self._ack_wake = asyncio.Event()
        self._ack_task: asyncio.Task[None] | None = None
        self._closing = False
        self._claim_lock = asyncio.Lock()
        #: claimed messages whose outcome is not committed yet: their leases are kept
        self._held: set[UUID] = set()
        #: messages handed to this worker while it was full: handed back in a batch
        self._overflow: list[UUID] = []
        self._release_task: asyncio.Task[None] | None = None
        #: close() began: hints handed to this worker are left to unregister_worker
        self._stopping = False
        self._keeper: asyncio.Task[None] | None = None
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
                    queries.REGISTER_WORKER, [socket.gethostname(), os.getpid()]
                )
                self.worker_id = UUID(str(row["id"]))
                self._dispatcher.add_catch_up(self._catch_up)
            await self._db.fetch(queries.SERVE_AGENTS, [self.worker_id, fresh])
            rows = await self._db.fetch(queries.AGENT_CHANNELS_OF, [fresh])
            channels = [r["channel"] for r in rows]
            # LISTEN before the first claim: nothing sent from now on is missed
            await self._dispatcher.subscribe(channels, self._on_notification)
            self._channels += channels
            self._served.update(fresh)
            first = not self._tasks
            if first:
                # started only now: the first claim does not race the calls above for
                # a connection (a starting process then needs one, not two)
                self._start_tasks()
            self._wake.set()
            if first:
                # present from now on: messages may be handed to this worker as stored
                await self._dispatcher.hold(self.worker_id, self._config.delivery_lease)

    def _start_tasks(self) -> None:
        self._ack_task = asyncio.create_task(self._ack_loop(), name="amp-acks")
        self._keeper = asyncio.create_task(self._keep_leases(), name="amp-leases")
        self._tasks = [
            asyncio.create_task(self._loop(), name="amp-delivery"),
            self._ack_task,
            asyncio.create_task(self._heartbeat(), name="amp-heartbeat"),
            self._keeper,
        ]

    def poke(self) -> None:
        """Look for work now: something was just stored for an agent served here."""
        self._wake.set()

    async def drain(self, timeout: float | None = None) -> bool:
        """Deliver what is claimable now for the agents served here and wait until
        every running handler has finished. True if that happened within ``timeout``
        seconds (``None``: no limit); handlers still running are left running."""
        if self.worker_id is None:
            return True
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            free = self._capacity - len(self._inflight)
            claimed = await self._claim(free) if free > 0 else 0
            if not claimed and not self._inflight:
                return True
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            if self._inflight:
                await asyncio.wait(
                    set(self._inflight), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )

    async def close(self, grace: float = 5.0) -> None:
        """Stop the loop, drain (deliver what is claimable now and let running
        handlers finish, up to ``grace`` seconds in all), then hand back unfinished
        claims."""
        self._stopping = True
        if self.worker_id is not None:
            self._dispatcher.drop_presence(self.worker_id)
        acks = self._ack_task
        keeper = self._keeper
        # not in the middle of a claim: a claim cancelled after it committed would
        # leave its messages leased to this worker, untouched until the lease expires
        async with self._claim_lock:
            for task in self._tasks:
                if task is not acks and task is not keeper:
                    await tasks.stop(task)
        if self.worker_id is not None:
            try:
                await self.drain(grace)
            except Exception:
                log.exception("draining deliveries on close failed")
        await tasks.stop(keeper)
        self._keeper = None
        await tasks.stop(self._release_task)
        if self._inflight:
            for task in list(self._inflight):
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
                await self._db.execute(queries.UNREGISTER_WORKER, [self.worker_id])
            self.worker_id = None

    @property
    def served(self) -> frozenset[str]:
        """External ids of the agents this process serves."""
        return frozenset(self._served)

    # -- hints -------------------------------------------------------------

    def _on_notification(self, channel: str, notification: AnyNotification) -> None:
        if not isinstance(notification, MessageStored):
            return
        if notification.message_type not in PUSHED_TYPES:
            return
        if notification.worker is None:
            self._wake.set()  # claimable: claim it
        elif notification.worker == self.worker_id:
            self._take(notification)
        # else: handed to another worker, leased to it: nothing to claim

    def _take(self, hint: MessageStored) -> None:
        """Run a message handed to this worker as it was stored (it is leased to us)."""
        if self._stopping or hint.message_id in self._held:
            return  # closing: unregister_worker hands it back
        if len(self._inflight) >= self._capacity:
            self._overflow.append(hint.message_id)
            if self._release_task is None or self._release_task.done():
                self._release_task = asyncio.create_task(
                    self._release_overflow(), name="amp-release"
                )
            return
        self._start(Claimed.from_hint(hint))

    async def _release_overflow(self) -> None:
        """Hand back what came while this worker was full, for any worker to claim."""
        while self._overflow:
            batch, self._overflow = self._overflow, []
            try:
                await self._db.fetch(queries.RELEASE_DELIVERIES, [self.worker_id, batch, []])
            except Exception as exc:
                # the leases expire and the messages are claimed then: nothing is lost
                log.warning("handing back %d deliveries failed: %s", len(batch), exc)

    async def _catch_up(self) -> None:
        # the listener lost its connection: what was handed to this worker meanwhile
        # announced itself there, unseen; hand it back (before the worker is present
        # again, see Dispatcher.hold) and claim whatever is claimable
        if self.worker_id is not None and not self._stopping:
            try:
                await self._db.fetch(
                    queries.RELEASE_DELIVERIES, [self.worker_id, None, list(self._held)]
                )
            except Exception as exc:
                log.warning("handing back unseen deliveries failed: %s", exc)
        self._wake.set()

    # -- the loop ----------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            free = self._capacity - len(self._inflight)
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
        # one claim at a time: drain() must not see "nothing claimed, nothing running"
        # while the loop's claim is between its query and starting the handlers
        async with self._claim_lock:
            try:
                rows = await self._db.fetch(
                    # content as text, decoded row by row below: one value psqlpy cannot
                    # decode must not fail the whole batch
                    queries.CLAIM_DELIVERIES,
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
                try:
                    row["content"] = content.loads(row["content"])
                    row["metadata"] = content.loads(row["metadata"])
                    self._start(Claimed.from_row(row))
                except content.UndecodableContent as exc:
                    # retrying cannot make it decodable: dead-letter it alone, with the reason
                    row["content"], row["metadata"] = None, {}
                    self._track(self._fail(Claimed.from_row(row), str(exc), final=True))
            return len(rows)

    def _start(self, claimed: Claimed) -> None:
        """Deliver a message leased to this worker (claimed, or handed to it)."""
        self._held.add(claimed.id)
        self._track(self._deliver(claimed))

    def _track(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._inflight.add(task)
        task.add_done_callback(self._finished)

    async def _keep_leases(self) -> None:
        """Extend the leases of what this worker still holds, every third of the
        lease, for as long as the process (its event loop) is alive."""
        period = self._config.delivery_lease / 3
        while True:
            await asyncio.sleep(period)
            held = list(self._held)
            if not held:
                continue
            try:
                rows = await self._db.fetch(
                    queries.EXTEND_LEASES,
                    [self.worker_id, held, self._config.delivery_lease],
                )
            except Exception as exc:
                log.warning("extending %d leases failed: %s", len(held), exc)
                continue
            kept = {str(r["id"]) for r in rows}
            lost = [str(i) for i in held if str(i) not in kept and i in self._held]
            if lost:
                log.warning("leases lost while handlers ran (may run again elsewhere): %s", lost)

    def _finished(self, task: asyncio.Task[None]) -> None:
        before = len(self._inflight)
        self._inflight.discard(task)
        if before > self._refill_at >= len(self._inflight):
            # room for a batch again: claim for it in one go (waking on every finished
            # handler would claim one message at a time). New work
            # otherwise announces itself by NOTIFY, and a failed delivery wakes the
            # loop itself (to time its retry)
            self._wake.set()

    async def _idle_timeout(self) -> float:
        """Seconds until the next retry or lease expiry, clamped to the poll interval."""
        poll = self._config.poll_interval
        try:
            row = await self._db.fetch_one(queries.NEXT_DELIVERY_AT, [self.worker_id])
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
                await self._db.execute(queries.HEARTBEAT, [self.worker_id])
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    # -- one delivery ------------------------------------------------------

    async def _deliver(self, claimed: Claimed) -> None:
        acked = False
        try:
            async with self._slots:
                acked = await self._run_handler(claimed)
        finally:
            if not acked:  # its outcome is committed (or it was given up): no lease to keep
                self._held.discard(claimed.id)

    async def _run_handler(self, claimed: Claimed) -> bool:
        """Run the handler; True if its acknowledgement is queued."""
        context = claimed.context()
        handler = self._handlers.get(claimed.recipient_external_id)
        if handler is None:  # the handler was removed: give the message back
            await self._fail(claimed, "no handler registered in this process", retry_in=0.0)
            return False
        try:
            message: Any
            if claimed.message_type == "meeting_invitation":
                # a protocol message: its own type, never validated as the user's T
                message = MeetingInvitation(claimed.content)
            else:
                message = content.decode(self._adapter(), claimed.content)
        except ValidationError as exc:
            # retrying cannot make content fit the type: fail it now
            await self._fail(claimed, f"content does not fit the message type: {exc}", final=True)
            return False
        try:
            answer = await handler(message, context)
            replies = answer is not None and context.requires_reply
            if replies and self._reply_hook is not None and await self._reply_hook(context, answer):
                return False  # amp.sync_reply settled the delivery: nothing to ack
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
            return False
        self._acks.append(claimed.id)
        self._ack_wake.set()
        return True

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
            rows = await self._ack(batch)
            self._held.difference_update(batch)
            if rows is None:
                continue
            if len(rows) < len(batch):
                acked = {str(r["id"]) for r in rows}
                lost = [str(i) for i in batch if str(i) not in acked]
                log.warning("leases lost before the ack (delivered again elsewhere): %s", lost)

    async def _ack(self, batch: list[UUID]) -> list[Row] | None:
        """Acknowledge ``batch``, retrying while the database is unreachable for up to
        half a lease (the leases are still held and extended meanwhile). ``None`` if
        it could not: the caller stops extending those leases, they expire, and the
        messages are delivered again (at least once), so nothing is lost."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._config.delivery_lease / 2
        delay = 0.05
        while True:
            try:
                return await self._db.fetch(queries.ACK_DELIVERIES, [self.worker_id, batch])
            except TRANSIENT_ERRORS as exc:
                if loop.time() + delay >= give_up_at or self._closing:
                    log.warning("acknowledging %d deliveries failed: %s", len(batch), exc)
                    return None
            except Exception:
                log.exception("acknowledging %d deliveries failed", len(batch))
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _backoff(self, claimed: Claimed) -> float:
        delay = self._config.delivery_backoff_base * 2 ** (claimed.attempts - 1)
        return float(min(delay, self._config.delivery_backoff_max))

    async def _fail(
        self, claimed: Claimed, error: str, retry_in: float = 0.0, final: bool = False
    ) -> None:
        """Record a failed attempt: retried after ``retry_in`` (or marked failed).

        Never raises. While the database is unreachable it keeps trying (the lease
        is still held, so the message is not delivered meanwhile), until shortly
        before the lease would expire on its own: the retry then happens per the
        backoff, not after a whole lease.
        """
        max_attempts = claimed.attempts if final else self._config.delivery_max_attempts
        loop = asyncio.get_running_loop()
        # the lease started when the message was claimed, at the latest now
        give_up_at = loop.time() + self._config.delivery_lease
        delay = 0.05
        while True:
            try:
                status = await self._db.fetch_value(
                    queries.FAIL_DELIVERY,
                    [self.worker_id, claimed.id, error[:2000], retry_in, max_attempts],
                    timeout=max(0.001, give_up_at - loop.time()),
                )
                break
            except DeliveryError as exc:
                log.warning("could not record the failure of %s: %s", claimed.id, exc)
                return
            except TRANSIENT_ERRORS as exc:
                if loop.time() + delay >= give_up_at:
                    log.warning(
                        "could not record the failure of %s (its lease expires and it is "
                        "delivered again): %s",
                        claimed.id,
                        exc,
                    )
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except Exception as exc:
                log.exception("could not record the failure of %s: %s", claimed.id, exc)
                return
        self._wake.set()  # recompute when to look again (the retry's available_at)
        if status == "failed":
            log.error(
                "message %s failed after %d attempts: %s", claimed.id, claimed.attempts, error
            )
