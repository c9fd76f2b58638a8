"""One-way messages: the call of ``amp.send_one_way``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

if TYPE_CHECKING:
    from .client import AgentMessaging

T = TypeVar("T")


class OneWayMessenger(Generic[T]):
    """Fire-and-forget messages, pushed durably to the recipient's handler.

    The message is stored before ``send`` returns; the recipient's handler runs
    wherever it is registered (any process), at least once. If no handler is online
    the message waits and is delivered when one registers.
    """

    def __init__(self, sdk: AgentMessaging[T]) -> None:
        self._sdk = sdk

    async def send(
        self,
        sender_external_id: str,
        recipient_external_id: str,
        message: T,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> UUID:
        """Send ``message``; returns its id.

        Raises :class:`AgentNotFoundError`, and :class:`InvalidInputError` for empty
        ids, a message to oneself, or content that is not serialisable or too large.
        :class:`ConnectionLostError` with ``outcome_unknown`` means the message may
        or may not be stored: send again with the same ``idempotency_key`` (any
        string of 1-200 bytes, unique per sender) and get the original id back, never
        a second message.
        """
        sdk = self._sdk
        value = await sdk.db.fetch_value(
            "SELECT amp.send_one_way($1, $2, $3::text::jsonb, $4::text::jsonb, $5)",
            [
                *sdk.message_args(sender_external_id, recipient_external_id, message, metadata),
                idempotency_key,
            ],
        )
        return UUID(str(value))
