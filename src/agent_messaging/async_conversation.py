"""Asynchronous conversations: the calls of ``sql/inbox.sql``.

Reading is recoverable: ``amp.read_unread`` hands messages out under a receipt and a
lease, and they are marked read only by ``amp.confirm_read`` for the messages this
process decoded and is about to return. If the answer of the read is lost (the
connection drops after the commit) or the process dies before confirming, the
messages are unread again once the lease runs out: nothing is lost. Each row is
decoded on its own (content selected as text): one that cannot be decoded, or does
not fit ``T``, is dead-lettered alone with its reason (``amp.reject_unread``; it shows
in ``amp.failed_deliveries``) and the others are returned.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel

from . import content, queries, validation
from .context import Pattern
from .database import Row
from .dispatcher import AnyNotification, Outcome
from .exceptions import TRANSIENT_ERRORS, HandlerExecutionError, HandlerNotRegisteredError
from .models import MessageContext
from .notifications import MessageStored

if TYPE_CHECKING:
    pass

T = TypeVar("T")
log = logging.getLogger("agent_messaging.async_conversation")

#: seconds a read holds its messages for confirmation (the confirmation follows at
#: once; the lease matters only when the read's answer or the process was lost)
READ_LEASE_SECONDS = 30.0
#: seconds ``resume_agent_handler`` holds a message while its handler runs
RESUME_LEASE_SECONDS = 600.0


class InboxMessage(BaseModel, Generic[T]):
    """One async message of an inbox page (:meth:`AsyncConversation.get_inbox`)."""

    id: UUID
    #: the message's position in the total order; pass the last one of a page as
    #: ``after_seq`` to get the next page
    seq: int
    sender_external_id: str
    sender_name: str
    session_id: UUID | None
    #: the content as ``T``; ``None`` if it could not be decoded (see ``error``)
    content: T | None
    metadata: dict[str, Any]
    created_at: datetime
    #: when it was read (``None``: unread)
    read_at: datetime | None
    #: why the content could not be decoded or was dead-lettered, if so
    error: str | None = None


class AsyncConversation(Pattern, Generic[T]):
    """A durable inbox with read state. Sending never blocks; the recipient pulls
    (:meth:`get_unread_messages`) or waits (:meth:`wait_for_message`)."""

    async def send(
        self,
        sender_external_id: str,
        recipient_external_id: str,
        message: T,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> UUID:
        """Store ``message`` in the recipient's inbox and notify it; returns its id.

        Raises :class:`AgentNotFoundError` and :class:`InvalidInputError`. A repeat
        with the same ``idempotency_key`` (after a :class:`ConnectionLostError` with
        an unknown outcome) returns the original id and stores nothing.
        """
        sdk = self._sdk
        value = await self._db.fetch_value(
            queries.ASYNC_SEND,
            [
                *sdk.codec.message_args(
                    sender_external_id, recipient_external_id, message, metadata
                ),
                idempotency_key,
            ],
        )
        return UUID(str(value))

    async def get_unread_messages(
        self, agent_external_id: str, limit: int | None = None
    ) -> list[T]:
        """Take the agent's unread messages, oldest first, marking them read: at
        most ``limit``, by default one page (``amp._setting('default_page_size')``,
        100 unless an administrator changed it; the largest limit allowed is
        ``max_page_size``, 1000). Call again for the next page.

        Atomic: two concurrent readers never receive the same message. Recoverable:
        a message is marked read only once this call has it in hand (see the module
        docstring). A message that cannot be decoded is dead-lettered, not returned.
        Raises :class:`AgentNotFoundError`, :class:`InvalidInputError` (a bad limit).
        """
        validation.external_id("agent external id", agent_external_id)
        taken = await self._take(agent_external_id, None, validation.limit(limit))
        return [message for _, message in taken]

    async def get_messages_from_agent(
        self,
        recipient_external_id: str,
        sender_external_id: str,
        mark_read: bool = True,
        limit: int | None = None,
    ) -> list[T]:
        """The unread messages from one sender, oldest first, at most ``limit`` (by
        default one page, as :meth:`get_unread_messages`); ``mark_read=False`` only
        looks, leaving them unread (undecodable ones are then skipped)."""
        validation.external_id("recipient external id", recipient_external_id)
        validation.external_id("sender external id", sender_external_id)
        page = validation.limit(limit)
        if mark_read:
            taken = await self._take(recipient_external_id, sender_external_id, page)
            return [message for _, message in taken]
        rows = await self._sdk.db.fetch(
            queries.PEEK_UNREAD, [recipient_external_id, sender_external_id, page]
        )
        looked: list[T] = []
        for row in rows:
            try:
                looked.append(self._decode(row))
            except content.UndecodableContent as exc:
                log.warning("skipping message %s of %s: %s", row["id"], recipient_external_id, exc)
        return looked

    async def get_inbox(
        self,
        agent_external_id: str,
        sender_external_id: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> list[InboxMessage[T]]:
        """Page through the agent's inbox, read and unread messages alike, oldest
        first, without marking anything: the messages after ``after_seq``, at most
        ``limit`` (default one page). Pass the last ``seq`` of a page as
        ``after_seq`` for the next; an empty page is the end. Use it to read again
        messages already read. A message that cannot be decoded is returned with
        ``content=None`` and the reason in ``error``."""
        validation.external_id("agent external id", agent_external_id)
        validation.optional_external_id("sender external id", sender_external_id)
        after = validation.sequence_number("after_seq", after_seq)
        rows = await self._sdk.db.fetch(
            queries.INBOX_MESSAGES,
            [agent_external_id, sender_external_id, after, validation.limit(limit)],
        )
        page: list[InboxMessage[T]] = []
        for row in rows:
            error = row["last_error"] if row["delivery_status"] == "failed" else None
            message: T | None = None
            try:
                message = self._decode(row)
            except content.UndecodableContent as exc:
                error = str(exc)
            page.append(
                InboxMessage[Any](
                    id=row["id"],
                    seq=row["seq"],
                    sender_external_id=row["sender_external_id"],
                    sender_name=row["sender_name"],
                    session_id=row["session_id"],
                    content=message,
                    metadata=self._metadata(row),
                    created_at=row["created_at"],
                    read_at=row["read_at"],
                    error=error,
                )
            )
        return page

    async def wait_for_message(
        self,
        recipient_external_id: str,
        sender_external_id: str | None,
        timeout: float | None = None,
    ) -> T | None:
        """Wait for the next unread message from ``sender`` (any sender if ``None``),
        taking it (marked read); ``None`` if none arrives within ``timeout`` seconds
        (``timeout=None``: wait forever).

        Listen first, then check the table, then wait for a notification (or the
        fallback poll), then check again: a lost notification only costs a poll. A
        lost connection or a server restart is ridden out: the check is repeated
        until the deadline.
        """
        sdk = self._sdk
        validation.external_id("recipient external id", recipient_external_id)
        validation.optional_external_id("sender external id", sender_external_id)
        timeout = validation.timeout("timeout", timeout)
        channel = await sdk.directory.agent_channel(recipient_external_id)

        def wanted(notification: AnyNotification) -> bool:
            return isinstance(notification, MessageStored) and notification.message_type == "async"

        async def check(remaining: float | None) -> Outcome[T] | None:
            taken = await self._take(recipient_external_id, sender_external_id, 1, remaining)
            return Outcome(taken[0][1]) if taken else None

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        outcome = await sdk.dispatcher.wait_until(
            [channel],
            check,
            deadline,
            sdk.config.poll_interval,
            wanted=wanted,
            retried=TRANSIENT_ERRORS,
        )
        return None if outcome is None else outcome.value

    async def resume_agent_handler(self, agent_external_id: str) -> int:
        """Invoke the agent's handler (registered in this process) for each unread
        message, oldest first; returns how many were handled.

        A message is held for the handler while it runs and marked read when it
        returns; if the handler raises, that message is put back unread and
        :class:`HandlerExecutionError` is raised (if the process dies, it is unread
        again after ``RESUME_LEASE_SECONDS``). A message that cannot be decoded is
        dead-lettered and skipped.
        """
        sdk = self._sdk
        validation.external_id("agent external id", agent_external_id)
        # AgentNotFoundError first, then HandlerNotRegisteredError, as planned
        recipient_name = (await sdk.directory.get_agent(agent_external_id)).name
        handler = sdk.handlers.get(agent_external_id)
        if handler is None:
            raise HandlerNotRegisteredError(f"no handler registered for {agent_external_id!r}")
        handled = 0
        while True:
            rows = await sdk.db.fetch(
                queries.READ_UNREAD, [agent_external_id, None, 1, RESUME_LEASE_SECONDS]
            )
            if not rows:
                return handled
            row = rows[0]
            decoded = await self._decode_or_reject(agent_external_id, rows)
            if not decoded:
                continue
            message = decoded[0][1]
            context = MessageContext(
                message_id=UUID(str(row["id"])),
                sender_external_id=row["sender_external_id"],
                sender_name=row["sender_name"],
                recipient_external_id=agent_external_id,
                recipient_name=recipient_name,
                message_type="async",
                session_id=UUID(str(row["session_id"])) if row["session_id"] else None,
                metadata=self._metadata(row),
            )
            try:
                await handler(message, context)
            except Exception as exc:
                # release the receipt without confirming: the message is unread again
                await sdk.db.fetch(
                    queries.CONFIRM_READ, [agent_external_id, str(row["receipt"]), []]
                )
                raise HandlerExecutionError(
                    f"handler of {agent_external_id!r} failed on message {row['id']}: {exc}"
                ) from exc
            await sdk.db.fetch(
                queries.CONFIRM_READ, [agent_external_id, str(row["receipt"]), [str(row["id"])]]
            )
            handled += 1

    async def _take(
        self, agent: str, sender: str | None, limit: int | None, timeout: float | None = None
    ) -> list[tuple[Row, T]]:
        """Read under a receipt, decode row by row, dead-letter what cannot be
        decoded, confirm the rest; returns the confirmed rows with their content."""
        db = self._db
        rows = await db.fetch(
            queries.READ_UNREAD, [agent, sender, limit, READ_LEASE_SECONDS], timeout=timeout
        )
        if not rows:
            return []
        decoded = await self._decode_or_reject(agent, rows)
        confirmed = await db.fetch(
            queries.CONFIRM_READ,
            [agent, str(rows[0]["receipt"]), [str(row["id"]) for row, _ in decoded]],
        )
        ids = {str(r["id"]) for r in confirmed}
        if len(ids) < len(decoded):
            lost = [str(row["id"]) for row, _ in decoded if str(row["id"]) not in ids]
            log.warning("read lease of %s ran out before the confirmation: %s", agent, lost)
        return [(row, message) for row, message in decoded if str(row["id"]) in ids]

    async def _decode_or_reject(self, agent: str, rows: list[Row]) -> list[tuple[Row, T]]:
        """Decode each row on its own; dead-letter those that cannot be decoded."""
        decoded: list[tuple[Row, T]] = []
        for row in rows:
            try:
                decoded.append((row, self._decode(row)))
            except content.UndecodableContent as exc:
                reason = f"inbox read: {exc}"
                log.warning("dead-lettering message %s of %s: %s", row["id"], agent, reason)
                await self._db.fetch(queries.REJECT_UNREAD, [agent, str(row["id"]), reason[:2000]])
        return decoded

    def _decode(self, row: Row) -> T:
        value: T = content.decode_text(self._sdk.codec.adapter, row["content"])
        self._metadata(row)
        return value

    @staticmethod
    def _metadata(row: Row) -> dict[str, Any]:
        """The row's metadata (selected as text), parsed once and cached in the row."""
        meta = row["metadata"]
        if isinstance(meta, str):
            parsed = content.loads(meta)
            row["metadata"] = meta = parsed if isinstance(parsed, dict) else {}
        return meta if isinstance(meta, dict) else {}
