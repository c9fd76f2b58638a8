"""Transactional sends: the application's own SQL and SDK sends in one transaction.

The protocol lives in the application's database, so a send can be part of the
application's transaction (an outbox without an outbox table)::

    async with sdk.transaction() as tx:
        await tx.execute("UPDATE orders SET status = 'paid' WHERE id = $1", [order_id])
        await tx.one_way.send("billing", "shipping", {"order": order_id})

A rollback (the block raises) sends nothing; the commit makes the rows, the messages
and their notifications visible together (PostgreSQL delivers a transaction's
``NOTIFY`` at its commit). Only calls that store something and return can take part:
``send_and_wait`` cannot (its reply cannot come before the commit), nor can the waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar
from uuid import UUID

from .async_conversation import AsyncConversation
from .database import DbTransaction, Row
from .exceptions import TransactionError
from .one_way import OneWayMessenger
from .sync_conversation import SyncConversation

if TYPE_CHECKING:
    from .context import PatternContext

T = TypeVar("T")


class TransactionalAsyncConversation(Generic[T]):
    """The inbox calls that can run in a transaction: ``send`` and
    ``get_unread_messages`` (messages taken in a transaction that rolls back are
    unread again: take and process them atomically)."""

    def __init__(self, sdk: PatternContext, tx: DbTransaction) -> None:
        self._inbox: AsyncConversation[T] = AsyncConversation(sdk, db=tx)

    async def send(
        self,
        sender_external_id: str,
        recipient_external_id: str,
        message: T,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> UUID:
        """:meth:`AsyncConversation.send`, in the transaction."""
        return await self._inbox.send(
            sender_external_id, recipient_external_id, message, metadata, idempotency_key
        )

    async def get_unread_messages(
        self, agent_external_id: str, limit: int | None = None
    ) -> list[T]:
        """:meth:`AsyncConversation.get_unread_messages`, in the transaction (marked
        read at the commit; unread again after a rollback)."""
        return await self._inbox.get_unread_messages(agent_external_id, limit)


class TransactionalSyncConversation(Generic[T]):
    """The sync calls that can run in a transaction: ``reply``. ``send_and_wait``
    is refused: it waits for an answer that nobody can see before the commit."""

    def __init__(self, sdk: PatternContext, tx: DbTransaction) -> None:
        self._sync: SyncConversation[T] = SyncConversation(sdk, db=tx)

    async def reply(
        self,
        sender_external_id: str,
        recipient_external_id: str,
        message: T,
        metadata: dict[str, Any] | None = None,
    ) -> UUID:
        """:meth:`SyncConversation.reply`, in the transaction: the waiting agent
        gets the reply when the transaction commits."""
        return await self._sync.reply(sender_external_id, recipient_external_id, message, metadata)

    async def send_and_wait(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused with :class:`TransactionError`: the request would not be visible
        to the recipient before the commit, so its reply could never come inside
        the transaction. Call ``sdk.sync_conversation.send_and_wait`` outside it."""
        raise TransactionError(
            "send_and_wait cannot run inside a transaction: the request is invisible "
            "to the recipient until the commit, so the reply could never arrive; call "
            "sdk.sync_conversation.send_and_wait outside 'async with sdk.transaction()'"
        )


class Transaction(Generic[T]):
    """One database transaction of the application with SDK sends in it
    (:meth:`AgentMessaging.transaction`).

    ``execute`` / ``fetch`` / ``fetch_one`` / ``fetch_value`` run the application's
    own statements (parameters bound as ``$1, $2, ...``); ``one_way``,
    ``async_conversation`` and ``sync_conversation`` offer the calls that can be
    part of a transaction. A statement that fails aborts the transaction: the block's
    end then rolls back and raises :class:`TransactionError`, even if the error was
    caught inside the block.
    """

    def __init__(self, sdk: PatternContext, tx: DbTransaction) -> None:
        self._tx = tx
        #: one-way sends (``send``, ``send_many``, ``broadcast``), delivered after
        #: the commit
        self.one_way: OneWayMessenger[T] = OneWayMessenger(sdk, db=tx)
        #: inbox sends and reads
        self.async_conversation: TransactionalAsyncConversation[T] = TransactionalAsyncConversation(
            sdk, tx
        )
        #: replies (``send_and_wait`` is refused)
        self.sync_conversation: TransactionalSyncConversation[T] = TransactionalSyncConversation(
            sdk, tx
        )

    async def execute(
        self, query: str, params: Sequence[Any] | None = None, *, timeout: float | None = None
    ) -> None:
        """Run one statement of the application's in the transaction."""
        await self._tx.execute(query, params, timeout=timeout)

    async def fetch(
        self, query: str, params: Sequence[Any] | None = None, *, timeout: float | None = None
    ) -> list[Row]:
        """Run one statement in the transaction; its rows as dicts."""
        return await self._tx.fetch(query, params, timeout=timeout)

    async def fetch_one(
        self, query: str, params: Sequence[Any] | None = None, *, timeout: float | None = None
    ) -> Row:
        """Like :meth:`fetch` for a statement that yields exactly one row."""
        return await self._tx.fetch_one(query, params, timeout=timeout)

    async def fetch_value(
        self, query: str, params: Sequence[Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """The single column of the single row a statement yields."""
        return await self._tx.fetch_value(query, params, timeout=timeout)
