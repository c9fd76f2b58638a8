"""One-way messages: the calls of ``amp.send_one_way`` and ``amp.send_one_way_many``,
and waiting for a message's delivery outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from . import content, queries
from .context import Pattern
from .dispatcher import AnyNotification, Outcome
from .exceptions import DeliveryTimeoutError, HandlerExecutionError, InvalidInputError
from .notifications import DeliveryFinished

if TYPE_CHECKING:
    pass

T = TypeVar("T")


class OneWayMessenger(Pattern, Generic[T]):
    """Fire-and-forget messages, pushed durably to the recipient's handler.

    The message is stored before ``send`` returns; the recipient's handler runs
    wherever it is registered (any process), at least once. If no handler is online
    the message waits and is delivered when one registers. A handler registered in
    this process is handed the message at once (no poll), and leaving ``async with``
    delivers what is pending for this process's handlers first.
    """

    async def send(
        self,
        sender_external_id: str,
        recipient_external_id: str,
        message: T,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> UUID:
        """Send ``message``; returns its id (for :meth:`wait_delivered`).

        Raises :class:`AgentNotFoundError`, and :class:`InvalidInputError` for empty
        ids, a message to oneself, or content that is not serialisable or too large.
        :class:`ConnectionLostError` with ``outcome_unknown`` means the message may
        or may not be stored: send again with the same ``idempotency_key`` (any
        string of 1-200 bytes, unique per sender) and get the original id back, never
        a second message.
        """
        sdk = self._sdk
        value = await self._db.fetch_value(
            queries.SEND_ONE_WAY,
            [
                *sdk.codec.message_args(
                    sender_external_id, recipient_external_id, message, metadata
                ),
                idempotency_key,
            ],
        )
        sdk.poke_delivery(recipient_external_id)
        return UUID(str(value))

    async def send_many(
        self,
        sender_external_id: str,
        messages: Iterable[tuple[str, T]],
        metadata: dict[str, Any] | None = None,
    ) -> list[UUID]:
        """Send many messages at once: each ``(recipient_external_id, message)`` pair
        is one one-way message (the same recipient may appear many times). Returns
        their ids, in order.

        One statement and one transaction (``amp.send_one_way_many``): either every
        message is stored or none is. Each is delivered like one sent by
        :meth:`send`. ``metadata`` goes with every message. Raises
        :class:`InvalidInputError` (an empty batch, a message to oneself, content
        not serialisable or too large) and :class:`AgentNotFoundError`; an error
        about one element says which (``batch element 3: ...``, counted from 0).
        """
        recipients: list[str] = []
        bodies: list[str] = []
        for index, (recipient, message) in enumerate(messages):
            recipients.append(recipient)
            bodies.append(self._encode(index, message))
        return await self._send_many(sender_external_id, recipients, bodies, metadata)

    async def broadcast(
        self,
        sender_external_id: str,
        recipient_external_ids: Iterable[str],
        message: T,
        metadata: dict[str, Any] | None = None,
    ) -> list[UUID]:
        """Send one ``message`` to many recipients (one one-way message each, the
        content serialised and sent to the server once). Returns the message ids in
        the order of the recipients. All or nothing, like :meth:`send_many`.
        """
        body = self._encode(None, message)
        recipients = list(recipient_external_ids)
        return await self._send_many(sender_external_id, recipients, [body], metadata)

    def _encode(self, index: int | None, message: T) -> str:
        sdk = self._sdk
        try:
            return content.encode(sdk.codec.adapter, message, sdk.config.max_message_bytes)
        except InvalidInputError as exc:
            if index is None:
                raise
            raise InvalidInputError(f"batch element {index}: {exc}") from exc

    async def _send_many(
        self,
        sender: str,
        recipients: list[str],
        bodies: list[str],
        metadata: dict[str, Any] | None,
    ) -> list[UUID]:
        rows = await self._db.fetch(
            queries.SEND_ONE_WAY_MANY,
            [sender, recipients, bodies, content.encode_metadata(metadata)],
        )
        for recipient in dict.fromkeys(recipients):
            self._sdk.poke_delivery(recipient)
        return [UUID(str(row["id"])) for row in rows]

    async def wait_delivered(self, message_id: UUID, timeout: float | None = None) -> None:
        """Wait until the recipient's handler has handled the message.

        Returns once it is delivered (acknowledged). Raises
        :class:`HandlerExecutionError` (with ``last_error``, the handler's last
        error) once it is dead-lettered (failed after ``delivery_max_attempts``),
        :class:`DeliveryTimeoutError` if neither happens within ``timeout`` seconds
        (``None``: ``config.default_conversation_timeout``), :class:`InvalidInputError`
        if no pushed message has that id.

        Listens on the sender's channel first (acknowledgements and failures notify
        the sender), then reads the message's state, then waits, then reads again.
        """
        sdk = self._sdk
        loop = asyncio.get_running_loop()
        limit = loop.time() + (
            sdk.config.default_conversation_timeout if timeout is None else timeout
        )
        row = await sdk.db.fetch_one(queries.DELIVERY_OUTCOME, [message_id])
        channel = row["sender_channel"]

        def wanted(notification: AnyNotification) -> bool:
            return isinstance(notification, DeliveryFinished)

        async def check(_remaining: float | None) -> Outcome[None] | None:
            row = await sdk.db.fetch_one(queries.DELIVERY_OUTCOME, [message_id])
            status = row["delivery_status"]
            if status == "delivered":
                return Outcome(None)
            if status == "failed":
                raise HandlerExecutionError(
                    f"message {message_id} was not delivered: its handler failed "
                    f"{row['attempts']} time(s); last error: {row['last_error']}",
                    message_id=message_id,
                    last_error=row["last_error"],
                    attempts=row["attempts"],
                )
            return None

        channels = [] if channel is None else [channel]
        outcome = await sdk.dispatcher.wait_until(
            channels, check, limit, sdk.config.poll_interval, wanted=wanted
        )
        if outcome is None:
            raise DeliveryTimeoutError(f"message {message_id} is still pending after the timeout")
