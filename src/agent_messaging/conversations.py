"""Synchronous conversations: the calls of ``sql/conversations.sql``."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from . import content, validation
from .dispatcher import AnyNotification
from .exceptions import ConversationEndedError, ConversationTimeoutError, InvalidSessionStateError
from .models import MessageContext
from .notifications import MessageStored, SessionChanged

if TYPE_CHECKING:
    from .client import AgentMessaging

T = TypeVar("T")


class SyncConversation(Generic[T]):
    """Ask and wait for the answer, across processes and machines.

    ``send_and_wait`` blocks until the other agent replies (through :meth:`reply`,
    by returning a value from its handler, or by asking back with its own
    ``send_and_wait``: a conversation is a ping-pong), the timeout passes, or the
    conversation is ended.
    """

    def __init__(self, sdk: AgentMessaging[T]) -> None:
        self._sdk = sdk

    async def send_and_wait(
        self,
        sender_external_id: str,
        recipient_external_id: str,
        message: T,
        timeout: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> T:
        """Send ``message`` and wait for the reply, returned as ``T``.

        Raises :class:`ConversationTimeoutError` after ``timeout`` seconds (default
        ``config.default_conversation_timeout``; the wait is then cancelled in SQL
        and a late reply is refused to its sender), :class:`ConversationEndedError`
        if the conversation is ended meanwhile, :class:`AgentNotFoundError`,
        :class:`InvalidInputError`, and :class:`InvalidSessionStateError` if the
        sender is already waiting in this conversation.
        """
        sdk = self._sdk
        timeout = validation.timeout("timeout", timeout)
        if timeout is None:
            timeout = sdk.config.default_conversation_timeout
        args = sdk.message_args(sender_external_id, recipient_external_id, message, metadata)
        channel = await sdk.agent_channel(sender_external_id)
        woken = asyncio.Event()

        def hint(_: str, notification: AnyNotification) -> None:
            if isinstance(notification, MessageStored | SessionChanged):
                woken.set()

        async def catch_up() -> None:
            woken.set()

        # LISTEN before sending: the reply cannot slip between the send and the wait
        await sdk.dispatcher.subscribe([channel], hint)
        sdk.dispatcher.add_catch_up(catch_up)
        try:
            row = await sdk.db.fetch_one(
                "SELECT request_id FROM amp.sync_send($1, $2, $3::text::jsonb, $4::text::jsonb)",
                args,
            )
            request = UUID(str(row["request_id"]))
            return await self._wait(
                request, sender_external_id, recipient_external_id, timeout, woken
            )
        finally:
            sdk.dispatcher.remove_catch_up(catch_up)
            await sdk.dispatcher.unsubscribe([channel], hint)

    async def _wait(
        self, request: UUID, sender: str, recipient: str, timeout: float, woken: asyncio.Event
    ) -> T:
        sdk = self._sdk
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # No check before the first wait: the request was stored a moment ago while
        # we already listened, so its reply (or the end) will notify us.
        while True:
            remaining = deadline - loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    woken.wait(), max(0.0, min(remaining, sdk.config.poll_interval))
                )
            woken.clear()
            outcome = await self._outcome(request)
            if outcome is not None:
                return outcome
            if deadline - loop.time() <= 0:
                cancelled = await sdk.db.fetch_value(
                    "SELECT amp.cancel_wait($1, $2, $3)", [sender, recipient, request]
                )
                if cancelled:
                    raise ConversationTimeoutError(
                        f"{recipient!r} did not reply to {sender!r} within {timeout} s"
                    )
                # the reply (or the end) won the race: the next check reads it

    async def _outcome(self, request: UUID) -> T | None:
        """The reply if there is one; raises if the wait is over without one."""
        row = await self._sdk.db.fetch_one(
            "SELECT status, content::text AS content FROM amp.sync_result($1)", [request]
        )
        status = row["status"]
        if status == "replied":
            reply: T = content.decode(self._sdk.message_adapter, content.loads(row["content"]))
            return reply
        if status == "ended":
            raise ConversationEndedError(f"the conversation of request {request} was ended")
        if status == "cancelled":
            raise InvalidSessionStateError(f"the wait for request {request} was cancelled")
        return None

    async def reply(
        self,
        sender_external_id: str,
        recipient_external_id: str,
        message: T,
        metadata: dict[str, Any] | None = None,
    ) -> UUID:
        """Answer ``recipient``, which is waiting on ``sender``; returns the reply's id.

        Raises :class:`InvalidSessionStateError` if the recipient is not waiting
        (never asked, timed out, already answered), :class:`SessionNotFoundError` if
        the two have no conversation, :class:`AgentNotFoundError`,
        :class:`InvalidInputError`.
        """
        return await self._reply(sender_external_id, recipient_external_id, message, metadata)

    async def _reply(
        self,
        sender: str,
        recipient: str,
        message: T,
        metadata: dict[str, Any] | None,
        request: UUID | None = None,
    ) -> UUID:
        sdk = self._sdk
        value = await sdk.db.fetch_value(
            "SELECT amp.sync_reply($1, $2, $3::text::jsonb, $4::text::jsonb, $5)",
            [*sdk.message_args(sender, recipient, message, metadata), request],
        )
        return UUID(str(value))

    async def reply_from_handler(self, context: MessageContext, answer: T) -> None:
        """A handler returned ``answer`` for the request in ``context``: reply to it.

        If the request is no longer awaited (timed out, ended, answered by another
        means) the answer has nobody to go to; that is not the handler's failure.
        """
        with contextlib.suppress(InvalidSessionStateError):
            await self._reply(
                context.recipient_external_id,
                context.sender_external_id,
                answer,
                None,
                request=context.message_id,
            )

    async def end_conversation(self, requester_external_id: str, other_external_id: str) -> None:
        """End the conversation of the two agents: whoever waits in it wakes with
        :class:`ConversationEndedError`. Raises :class:`SessionNotFoundError` if
        they have no live conversation."""
        await self._sdk.db.fetch_value(
            "SELECT amp.end_conversation($1, $2)", [requester_external_id, other_external_id]
        )
