"""Asynchronous conversations: the calls of ``sql/inbox.sql``."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from . import content
from .database import Row
from .dispatcher import AnyNotification
from .exceptions import TRANSIENT_ERRORS, HandlerExecutionError, HandlerNotRegisteredError
from .models import MessageContext
from .notifications import MessageStored

if TYPE_CHECKING:
    from .client import AgentMessaging
    from .database import Statements

T = TypeVar("T")

_READ = (
    "SELECT id, content, metadata, session_id, sender_external_id, sender_name "
    "FROM amp.read_unread($1, $2, $3)"
)
_PEEK = (
    "SELECT id, content, metadata, session_id, sender_external_id, sender_name "
    "FROM amp.peek_unread($1, $2)"
)


class AsyncConversation(Generic[T]):
    """A durable inbox with read state. Sending never blocks; the recipient pulls
    (:meth:`get_unread_messages`) or waits (:meth:`wait_for_message`)."""

    def __init__(self, sdk: AgentMessaging[T], db: Statements | None = None) -> None:
        self._sdk = sdk
        #: where sends and reads run: a transaction (``sdk.transaction()``), else the pool
        self._tx = db

    @property
    def _db(self) -> Statements:
        return self._tx if self._tx is not None else self._sdk.db

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
            "SELECT amp.async_send($1, $2, $3::text::jsonb, $4::text::jsonb, $5)",
            [
                *sdk.message_args(sender_external_id, recipient_external_id, message, metadata),
                idempotency_key,
            ],
        )
        return UUID(str(value))

    async def get_unread_messages(
        self, agent_external_id: str, limit: int | None = None
    ) -> list[T]:
        """Take the agent's unread messages (at most ``limit``), oldest first,
        marking them read.

        Atomic: two concurrent readers never receive the same message.
        """
        rows = await self._read(agent_external_id, None, limit)
        return [self._decode(row) for row in rows]

    async def get_messages_from_agent(
        self, recipient_external_id: str, sender_external_id: str, mark_read: bool = True
    ) -> list[T]:
        """The unread messages from one sender, oldest first; ``mark_read=False``
        only looks, leaving them unread."""
        if mark_read:
            rows = await self._read(recipient_external_id, sender_external_id, None)
        else:
            rows = await self._sdk.db.fetch(_PEEK, [recipient_external_id, sender_external_id])
        return [self._decode(row) for row in rows]

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
        channel = await sdk.agent_channel(recipient_external_id)
        woken = asyncio.Event()

        def hint(_: str, notification: AnyNotification) -> None:
            if isinstance(notification, MessageStored) and notification.message_type == "async":
                woken.set()

        async def catch_up() -> None:
            woken.set()

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        await sdk.dispatcher.subscribe([channel], hint)
        sdk.dispatcher.add_catch_up(catch_up)
        retry = 0.05
        try:
            while True:
                woken.clear()
                try:
                    rows = await self._read(
                        recipient_external_id,
                        sender_external_id,
                        1,
                        None if deadline is None else max(0.001, deadline - loop.time()),
                    )
                    retry = 0.05
                except TRANSIENT_ERRORS:
                    if deadline is not None and loop.time() >= deadline:
                        return None
                    rows = []
                    woken.set()  # check again after a short pause, not a whole poll
                    pause = retry if deadline is None else deadline - loop.time()
                    await asyncio.sleep(max(0.0, min(retry, pause)))
                    retry = min(retry * 2, 0.5)
                if rows:
                    return self._decode(rows[0])
                wait = sdk.config.poll_interval
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return None
                    wait = min(wait, remaining)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), wait)
        finally:
            sdk.dispatcher.remove_catch_up(catch_up)
            await sdk.dispatcher.unsubscribe([channel], hint)

    async def resume_agent_handler(self, agent_external_id: str) -> int:
        """Invoke the agent's handler (registered in this process) for each unread
        message, oldest first; returns how many were handled.

        A message is marked read when taken; if the handler raises, that message is
        put back unread and :class:`HandlerExecutionError` is raised.
        """
        sdk = self._sdk
        handler = sdk.handlers.get(agent_external_id)
        if handler is None:
            raise HandlerNotRegisteredError(f"no handler registered for {agent_external_id!r}")
        handled = 0
        while rows := await self._read(agent_external_id, None, 1):
            row = rows[0]
            context = MessageContext(
                message_id=UUID(str(row["id"])),
                sender_external_id=row["sender_external_id"],
                sender_name=row["sender_name"],
                recipient_external_id=agent_external_id,
                recipient_name=(await sdk.get_agent(agent_external_id)).name,
                message_type="async",
                session_id=UUID(str(row["session_id"])),
                metadata=row["metadata"],
            )
            try:
                await handler(self._decode(row), context)
            except Exception as exc:
                await sdk.db.execute(
                    "SELECT amp.mark_unread($1, $2)", [agent_external_id, context.message_id]
                )
                raise HandlerExecutionError(
                    f"handler of {agent_external_id!r} failed on message {row['id']}: {exc}"
                ) from exc
            handled += 1
        return handled

    async def _read(
        self, agent: str, sender: str | None, limit: int | None, timeout: float | None = None
    ) -> list[Row]:
        return await self._db.fetch(_READ, [agent, sender, limit], timeout=timeout)

    def _decode(self, row: Row) -> T:
        value: T = content.decode(self._sdk.message_adapter, row["content"])
        return value
