"""One-way messages: the call of ``amp.send_one_way``, and waiting for the outcome."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from .dispatcher import AnyNotification
from .exceptions import DeliveryTimeoutError, HandlerExecutionError
from .notifications import DeliveryFinished

if TYPE_CHECKING:
    from .client import AgentMessaging

T = TypeVar("T")


class OneWayMessenger(Generic[T]):
    """Fire-and-forget messages, pushed durably to the recipient's handler.

    The message is stored before ``send`` returns; the recipient's handler runs
    wherever it is registered (any process), at least once. If no handler is online
    the message waits and is delivered when one registers. A handler registered in
    this process is handed the message at once (no poll), and leaving ``async with``
    delivers what is pending for this process's handlers first.
    """

    def __init__(self, sdk: AgentMessaging[T]) -> None:
        self._sdk = sdk

    async def send(
        self,
        sender_external_id: str,
        recipient_external_id: str,
        message: T,
        metadata: dict[str, Any] | None = None,
    ) -> UUID:
        """Send ``message``; returns its id (for :meth:`wait_delivered`).

        Raises :class:`AgentNotFoundError`, and :class:`InvalidInputError` for empty
        ids, a message to oneself, or content that is not serialisable or too large.
        """
        sdk = self._sdk
        value = await sdk.db.fetch_value(
            "SELECT amp.send_one_way($1, $2, $3::text::jsonb, $4::text::jsonb)",
            sdk.message_args(sender_external_id, recipient_external_id, message, metadata),
        )
        sdk.poke_delivery(recipient_external_id)
        return UUID(str(value))

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
        query = "SELECT * FROM amp.delivery_outcome($1)"
        row = await sdk.db.fetch_one(query, [message_id])
        channel = row["sender_channel"]
        woken = asyncio.Event()

        def hint(_channel: str, notification: AnyNotification) -> None:
            if isinstance(notification, DeliveryFinished):
                woken.set()

        async def catch_up() -> None:
            woken.set()

        if channel is not None:
            await sdk.dispatcher.subscribe([channel], hint)
        sdk.dispatcher.add_catch_up(catch_up)
        try:
            while True:
                woken.clear()
                row = await sdk.db.fetch_one(query, [message_id])
                status = row["delivery_status"]
                if status == "delivered":
                    return
                if status == "failed":
                    raise HandlerExecutionError(
                        f"message {message_id} was not delivered: its handler failed "
                        f"{row['attempts']} time(s); last error: {row['last_error']}",
                        message_id=message_id,
                        last_error=row["last_error"],
                        attempts=row["attempts"],
                    )
                remaining = limit - loop.time()
                if remaining <= 0:
                    raise DeliveryTimeoutError(
                        f"message {message_id} is still pending after the timeout"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, sdk.config.poll_interval))
        finally:
            sdk.dispatcher.remove_catch_up(catch_up)
            if channel is not None:
                await sdk.dispatcher.unsubscribe([channel], hint)
