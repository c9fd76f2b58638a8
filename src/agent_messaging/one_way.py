"""One-way messages: the calls of ``amp.send_one_way`` and ``amp.send_one_way_many``,
and waiting for a message's delivery outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

from . import content, queries
from .context import Pattern, PatternContext
from .dispatcher import AnyNotification, Outcome
from .exceptions import (
    TRANSIENT_ERRORS,
    AgentMessagingError,
    DeliveryTimeoutError,
    HandlerExecutionError,
    InvalidInputError,
)
from .notifications import DeliveryFinished

if TYPE_CHECKING:
    from .database import Statements

T = TypeVar("T")


#: most sends stored together in one transaction (see OneWayMessenger._drain)
_BATCH = 100


def _settle(
    waiting: asyncio.Future[UUID], value: UUID | None = None, exc: BaseException | None = None
) -> None:
    if waiting.done():  # its caller was cancelled
        return
    if exc is not None:
        waiting.set_exception(exc)
    else:
        assert value is not None
        waiting.set_result(value)


class OneWayMessenger(Pattern, Generic[T]):
    """Fire-and-forget messages, pushed durably to the recipient's handler.

    The message is stored before ``send`` returns; the recipient's handler runs
    wherever it is registered (any process), at least once. If no handler is online
    the message waits and is delivered when one registers. A handler registered in
    this process is handed the message at once (no poll), and leaving ``async with``
    delivers what is pending for this process's handlers first.

    Sends made at the same time (from several tasks) are stored together, in one
    transaction, while one is in flight (``Config.coalesce_sends``).
    """

    def __init__(self, sdk: PatternContext, db: Statements | None = None) -> None:
        super().__init__(sdk, db)
        #: a send of this messenger is in flight: others wait in _waiting
        self._busy = False
        self._waiting: list[tuple[list[Any], asyncio.Future[UUID]]] = []
        #: the task storing them (held here: the event loop keeps tasks only weakly)
        self._drainer: asyncio.Task[None] | None = None

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
        args = self._sdk.codec.message_args(
            sender_external_id, recipient_external_id, message, metadata
        )
        if (
            idempotency_key is not None
            or self._tx is not None
            or not self._sdk.config.coalesce_sends
        ):
            return await self._store(args, idempotency_key)
        if not self._busy:  # nothing of ours in flight: store it now, on its own
            self._busy = True
            try:
                return await self._store(args, None)
            finally:
                self._busy = False
                self._store_waiting()
        # another send is in flight: wait for it, then go with whatever else came
        waiting: asyncio.Future[UUID] = asyncio.get_running_loop().create_future()
        self._waiting.append((args, waiting))
        return await waiting

    async def _store(self, args: list[Any], idempotency_key: str | None) -> UUID:
        """``amp.send_one_way``: one message, one transaction."""
        value = await self._db.fetch_value(queries.SEND_ONE_WAY, [*args, idempotency_key])
        self._sdk.poke_delivery(args[1])
        return UUID(str(value))

    # -- concurrent sends, stored together ----------------------------------
    #
    # Every NOTIFYing commit of a database takes one lock, held through its WAL
    # flush: concurrent sends queue for it one by one, each paying a flush. So
    # sends that come while one of this process's is in flight wait for it and
    # then go together, one amp.send_one_way_many per sender and metadata: one
    # commit, one flush and one hint per recipient for the lot. A send alone never
    # waits. All or nothing in the database, but not for the callers: if the batch
    # is refused, each is sent again on its own, so each caller gets its own
    # outcome (an unknown agent fails only the send that named it).

    def _store_waiting(self) -> None:
        if self._waiting and not self._busy:
            self._busy = True
            self._drainer = asyncio.create_task(self._drain(), name="amp-sends")

    async def _drain(self) -> None:
        batch: list[tuple[list[Any], asyncio.Future[UUID]]] = []
        try:
            while self._waiting:
                # a caller cancelled while it waited: its message never went out
                batch = [item for item in self._waiting[:_BATCH] if not item[1].done()]
                del self._waiting[:_BATCH]
                if batch:
                    await self._store_batch(batch)
        except BaseException:
            for _, waiting in batch + self._waiting:
                waiting.cancel()  # a no-op for those settled
            self._waiting.clear()
            raise
        finally:
            self._busy = False

    async def _store_batch(self, batch: list[tuple[list[Any], asyncio.Future[UUID]]]) -> None:
        groups: dict[tuple[str, str], list[tuple[list[Any], asyncio.Future[UUID]]]] = {}
        for item in batch:
            args = item[0]
            groups.setdefault((args[0], args[3]), []).append(item)
        for (sender, meta), items in groups.items():
            if len(items) == 1:
                await self._store_alone(*items[0])
                continue
            recipients = [args[1] for args, _ in items]
            try:
                rows = await self._db.fetch(
                    queries.SEND_ONE_WAY_MANY,
                    [sender, recipients, [args[2] for args, _ in items], meta],
                )
            except TRANSIENT_ERRORS as exc:
                for _, waiting in items:  # stored or not, as for a send of its own
                    _settle(waiting, exc=exc)
                continue
            except AgentMessagingError:
                for item in items:  # none was stored: each on its own, for its error
                    await self._store_alone(*item)
                continue
            except Exception as exc:  # not the database's answer: each caller hears it
                for _, waiting in items:
                    _settle(waiting, exc=exc)
                continue
            for recipient in dict.fromkeys(recipients):
                self._sdk.poke_delivery(recipient)
            for (_, waiting), row in zip(items, rows, strict=True):
                _settle(waiting, UUID(str(row["id"])))

    async def _store_alone(self, args: list[Any], waiting: asyncio.Future[UUID]) -> None:
        try:
            _settle(waiting, await self._store(args, None))
        except Exception as exc:
            _settle(waiting, exc=exc)

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
