"""Synchronous conversations: the calls of ``sql/conversations.sql``."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from . import content, queries, tasks, validation
from .context import Pattern
from .dispatcher import AnyNotification, Outcome
from .exceptions import (
    TRANSIENT_ERRORS,
    AgentMessagingError,
    ConversationEndedError,
    ConversationTimeoutError,
    InvalidSessionStateError,
)
from .models import MessageContext
from .notifications import MessageStored, SessionChanged

if TYPE_CHECKING:
    from .context import PatternContext
    from .database import Statements

T = TypeVar("T")
log = logging.getLogger("agent_messaging.sync_conversation")

#: after its deadline, how long a wait may spend cancelling itself in SQL before it
#: leaves that to a background task (so that it returns by its timeout + 0.5 s)
_GIVE_UP_BUDGET = 0.3
#: how long the background task keeps trying to cancel a wait the database did not
#: hear about (after that the wait ends by its deadline in SQL anyway)
_UNLOCK_PATIENCE = 120.0


class SyncConversation(Pattern, Generic[T]):
    """Ask and wait for the answer, across processes and machines.

    ``send_and_wait`` blocks until the other agent replies (through :meth:`reply`,
    by returning a value from its handler, or by asking back with its own
    ``send_and_wait``: a conversation is a ping-pong), the timeout passes, or the
    conversation is ended.
    """

    def __init__(self, sdk: PatternContext, db: Statements | None = None) -> None:
        super().__init__(sdk, db)
        self._unlocks: set[asyncio.Task[None]] = set()

    async def send_and_wait(
        self,
        sender_external_id: str,
        recipient_external_id: str,
        message: T,
        timeout: float | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> T:
        """Send ``message`` and wait for the reply, returned as ``T``.

        Raises :class:`ConversationTimeoutError` after ``timeout`` seconds (default
        ``config.default_conversation_timeout``; the wait is then cancelled in SQL
        and a late reply is refused to its sender), :class:`ConversationEndedError`
        if the conversation is ended meanwhile, :class:`AgentNotFoundError`,
        :class:`InvalidInputError`, and :class:`InvalidSessionStateError` if the
        sender is already waiting in this conversation.

        The wait rides out a lost connection or a server restart (it re-checks until
        its deadline). However it ends (reply, timeout, error, cancellation) nobody
        stays locked: the wait is cancelled in SQL, by a background retry if the
        database is unreachable at that moment, and in any case it is over in SQL at
        its deadline. ``idempotency_key``: a repeat of the send (after a
        :class:`ConnectionLostError` with an unknown outcome) waits on the request
        stored the first time instead of sending a second one.
        """
        sdk = self._sdk
        timeout = validation.timeout("timeout", timeout)
        if timeout is None:
            timeout = sdk.config.default_conversation_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        args = sdk.codec.message_args(sender_external_id, recipient_external_id, message, metadata)
        channel = await sdk.directory.agent_channel(sender_external_id)
        carried: dict[UUID, Any] = {}  # replies whose hint carried the content

        def wanted(notification: AnyNotification) -> bool:
            stored = notification if isinstance(notification, MessageStored) else None
            if stored is not None and stored.reply is not None and stored.reply_to is not None:
                carried[stored.reply_to] = stored.reply.content
            return isinstance(notification, MessageStored | SessionChanged)

        # LISTEN before sending: the reply cannot slip between the send and the wait
        async with sdk.dispatcher.waiting([channel], wanted) as wait:
            sending = asyncio.ensure_future(
                sdk.db.fetch_one(
                    queries.SYNC_SEND,
                    [*args, idempotency_key, timeout],
                    timeout=max(0.001, deadline - loop.time()),
                )
            )
            try:
                row = await asyncio.shield(sending)
            except asyncio.CancelledError:
                # cancelled while sending: the send may still commit, and its wait
                # must not outlive us; withdraw it once the send has answered
                self._unlock_once_sent(sending, sender_external_id, recipient_external_id)
                raise
            request = UUID(str(row["request_id"]))
            sdk.poke_delivery(recipient_external_id)
            settled = False
            try:

                async def check(remaining: float | None) -> Outcome[T] | None:
                    if request in carried:
                        # the reply's own hint carried it: committed, no need to read it
                        return Outcome(content.decode(sdk.codec.adapter, carried[request]))
                    return await self._outcome(request, remaining)

                # no check before the first wait: the request was stored a moment ago
                # while we already listened, so its reply (or the end) will notify us
                outcome = await wait.until(
                    check,
                    deadline,
                    sdk.config.poll_interval,
                    check_first=False,
                    retried=TRANSIENT_ERRORS,
                )
                result = (
                    outcome.value
                    if outcome is not None
                    else await self._give_up(
                        request, sender_external_id, recipient_external_id, timeout
                    )
                )
                settled = True
                return result
            except (ConversationTimeoutError, ConversationEndedError, InvalidSessionStateError):
                settled = True  # the wait is over in SQL too
                raise
            finally:
                if not settled:  # an error or a cancellation: nobody may stay locked
                    self._unlock_later(sender_external_id, recipient_external_id, request)

    async def _give_up(self, request: UUID, sender: str, recipient: str, timeout: float) -> T:
        """The deadline passed: cancel the wait in SQL, unless the reply (or the end)
        came first, which is then the outcome."""
        sdk = self._sdk
        expired = ConversationTimeoutError(
            f"{recipient!r} did not reply to {sender!r} within {timeout} s"
        )
        try:
            cancelled = await sdk.db.fetch_value(
                queries.CANCEL_WAIT,
                [sender, recipient, request],
                timeout=_GIVE_UP_BUDGET * 2 / 3,
            )
            if cancelled:
                raise expired
            # the reply (or the end) won the race, or the wait expired in SQL already
            outcome = await self._outcome(request, _GIVE_UP_BUDGET / 3)
        except InvalidSessionStateError:
            raise expired from None
        except TRANSIENT_ERRORS:
            self._unlock_later(sender, recipient, request)
            raise expired from None
        if outcome is None:
            self._unlock_later(sender, recipient, request)
            raise expired
        reply: T = outcome.value
        return reply

    def _unlock_once_sent(
        self, sending: asyncio.Future[dict[str, Any]], sender: str, recipient: str
    ) -> None:
        """The asker was cancelled during its ``amp.sync_send``: when that statement
        has answered, cancel the wait it stored (if it stored one)."""

        def sent(done: asyncio.Future[dict[str, Any]]) -> None:
            if not done.cancelled() and done.exception() is None:
                self._unlock_later(sender, recipient, UUID(str(done.result()["request_id"])))

        sending.add_done_callback(sent)

    def _unlock_later(self, sender: str, recipient: str, request: UUID) -> None:
        """Cancel the wait in SQL from a background task, retrying (bounded) while the
        database is unreachable."""

        async def unlock() -> None:
            loop = asyncio.get_running_loop()
            give_up_at = loop.time() + _UNLOCK_PATIENCE
            delay = 0.1
            while True:
                try:
                    await self._sdk.db.fetch_value(
                        queries.CANCEL_WAIT, [sender, recipient, request]
                    )
                    return
                except TRANSIENT_ERRORS as exc:
                    if loop.time() + delay >= give_up_at:
                        log.warning("could not cancel the wait of %s in SQL: %s", request, exc)
                        return
                except (AgentMessagingError, RuntimeError) as exc:
                    log.warning("could not cancel the wait of %s in SQL: %s", request, exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

        task = asyncio.get_running_loop().create_task(unlock(), name="amp-cancel-wait")
        self._unlocks.add(task)
        task.add_done_callback(self._unlocks.discard)

    async def close(self, grace: float = 1.0) -> None:
        """Give pending background unlocks a moment, then stop them."""
        if self._unlocks:
            await asyncio.wait(set(self._unlocks), timeout=grace)
        for task in list(self._unlocks):
            await tasks.stop(task)

    async def _outcome(self, request: UUID, timeout: float | None = None) -> Outcome[T] | None:
        """The reply if there is one; raises if the wait is over without one."""
        row = await self._sdk.db.fetch_one(
            queries.SYNC_RESULT,
            [request],
            timeout=timeout,
            read_only=True,
        )
        status = row["status"]
        if status == "replied":
            return Outcome(content.decode(self._sdk.codec.adapter, content.loads(row["content"])))
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
        db = self._db
        value = await db.fetch_value(
            queries.SYNC_REPLY,
            [*sdk.codec.message_args(sender, recipient, message, metadata), request],
        )
        return UUID(str(value))

    async def reply_from_handler(self, context: MessageContext, answer: T) -> bool:
        """A handler returned ``answer`` for the request in ``context``: reply to it.
        True if the reply was stored (``amp.sync_reply`` then also marks the request
        delivered, so the handler's worker does not acknowledge it).

        If the request is no longer awaited (timed out, ended, answered by another
        means) the answer has nobody to go to; that is not the handler's failure.
        """
        try:
            await self._reply(
                context.recipient_external_id,
                context.sender_external_id,
                answer,
                None,
                request=context.message_id,
            )
        except InvalidSessionStateError:
            return False
        return True

    async def end_conversation(self, requester_external_id: str, other_external_id: str) -> None:
        """End the conversation of the two agents: whoever waits in it wakes with
        :class:`ConversationEndedError`. Raises :class:`SessionNotFoundError` if
        they have no live conversation."""
        await self._sdk.db.fetch_value(
            queries.END_CONVERSATION, [requester_external_id, other_external_id]
        )
