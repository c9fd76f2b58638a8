"""``AgentMessaging``: the SDK's entry point, lifecycle and wiring only.

It resolves the server (configured or embedded), applies pending migrations, opens
the psqlpy pool and the notification dispatcher, and wires the parts, each with one
job: the content codec (:class:`content.Codec`), the directory of agents and their
channels (:class:`agents.Directory`), the handler registry and its serving
(:class:`handlers.HandlerRegistry`), the meeting event relay
(:class:`meeting_events.EventHandlers`), the turn sweeper
(:class:`turn_sweeper.TurnSweeper`), and the messaging patterns, which see the SDK
only through the narrow interfaces of :mod:`agent_messaging.context`. Everything it
does to state is a call of an ``amp.*`` SQL function.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, get_args, get_origin
from uuid import UUID

from pydantic import TypeAdapter

from . import migrations, queries
from .agents import Directory
from .config import Config
from .content import Codec
from .database import Database, resolve_dsn
from .delivery import DeliveryWorker, Handler
from .dispatcher import Dispatcher
from .handlers import HandlerRegistry
from .meeting_events import EventHandler, EventHandlers
from .models import (
    Agent,
    MeetingEvent,
    Message,
    MessageContext,
    Organization,
    Session,
    SessionType,
)

if TYPE_CHECKING:
    # loaded on first use: a process that only serves handlers never needs them
    from .async_conversation import AsyncConversation
    from .meeting_manager import MeetingManager
    from .one_way import OneWayMessenger
    from .retention import PruneResult
    from .sync_conversation import SyncConversation
    from .transaction import Transaction
    from .turn_sweeper import TurnSweeper

T = TypeVar("T")
log = logging.getLogger("agent_messaging")


class AgentMessaging(Generic[T]):
    """One SDK instance: a pool, a listener, and the four messaging patterns.

    ``T`` is the type of message content (a pydantic model, ``dict``, ``str``...);
    content is stored as JSONB and validated back into ``T`` on receipt. Use as an
    async context manager, or call :meth:`initialize` and :meth:`close`::

        async with AgentMessaging[dict]() as sdk:
            await sdk.register_organization("acme", "Acme")

    ``T`` comes from ``AgentMessaging[T]()``, from a subclass
    (``class MySDK(AgentMessaging[Note])``), or from ``message_type=``. Untyped
    (``AgentMessaging()``), content is any JSON, and JSON objects arrive as
    :class:`AttrDict` (a ``dict`` with attribute access: ``message.text``).
    """

    def __init__(self, config: Config | None = None, *, message_type: Any = None) -> None:
        self.config = config or Config()
        self._explicit_type = message_type
        self._db: Database | None = None
        self._dispatcher: Dispatcher | None = None
        #: ``T`` in and out (``T`` resolved when first needed: ``__orig_class__`` is
        #: set only after ``__init__``)
        self.codec = Codec(self._message_type, self.config.max_message_bytes)
        #: organizations, agents, and the channel cache
        self.directory = Directory(lambda: self.db)
        #: the handlers of this process and their serving
        self.handler_registry = HandlerRegistry()
        self.handler_registry.on_served = self._hear_migrations
        self._events = EventHandlers()
        # the messaging patterns, made (and their modules loaded) on first use
        self._one_way: OneWayMessenger[T] | None = None
        self._async_conversation: AsyncConversation[T] | None = None
        self._sync_conversation: SyncConversation[T] | None = None
        self._meeting: MeetingManager[T] | None = None
        self._sweeper: TurnSweeper | None = None
        self._hears_migrations = False

    # -- lifecycle ---------------------------------------------------------

    async def initialize(self) -> None:
        """Connect (starting the embedded server if none is configured), migrate
        unless ``config.apply_migrations`` is false, and start listening."""
        if self._db is not None:
            return
        dsn = await resolve_dsn(self.config)
        db = Database.connect(dsn, self.config.max_pool_size, self.config)
        try:
            if self.config.apply_migrations:
                await migrations.ensure_migrated(db)
            else:
                await migrations.check_compatible(db)  # fails fast, too
        except BaseException:
            # a failed start leaves nothing behind: no task, no connection
            await db.close()
            raise
        share_dir = None
        if self.config.share_listener:
            from . import hub

            share_dir = self.config.listener_socket_dir or hub.default_socket_dir()
        # the dispatcher LISTENs only while handlers are served or someone waits
        dispatcher = Dispatcher(
            db,
            check_interval=self.config.listener_check_interval,
            linger=self.config.listener_linger,
            share_dir=share_dir,
        )
        self._db, self._dispatcher = db, dispatcher
        delivery = DeliveryWorker(
            db,
            dispatcher,
            self.config,
            lambda: self.codec.adapter,
            self.handlers,
            reply_hook=self._reply_from_handler,
        )
        self.handler_registry.attach(delivery, auto_serve=self.config.auto_invoke_handlers)
        if self.config.enable_turn_timeout:
            from .turn_sweeper import TurnSweeper

            self._sweeper = TurnSweeper(self)
            self._sweeper.start()
        if self.handlers and self.config.auto_invoke_handlers:
            await self.serve_handlers()
        self._events.start(db, dispatcher, self.config.poll_interval)
        await self.events_ready()

    async def close(self) -> None:
        """Drain, then stop: first the handlers of this process get what is already
        claimable for them and running handlers finish (up to
        ``config.shutdown_timeout`` seconds in all; what is left is handed back for
        another process), then listening stops and the pool closes. Safe to call twice.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_timeout
        await self.handler_registry.stop_serving(self.config.shutdown_timeout)
        if self._db is not None and self._sync_conversation is not None:
            await self._sync_conversation.close()  # background unlocks of ended waits
        await self.handler_registry.close(grace=max(0.0, deadline - loop.time()))
        if self._sweeper is not None:
            await self._sweeper.close()
            self._sweeper = None
        await self._events.close()
        if self._dispatcher is not None:
            await self._dispatcher.close()
            self._dispatcher = None
        self._hears_migrations = False
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _hear_migrations(self) -> None:
        """A serving process (long-running, listening anyway) hears migrations made
        by others and logs them (a newer, breaking one as an error); a send-only
        process holds no listener for them."""
        if not self._hears_migrations:
            self._hears_migrations = True
            await self.dispatcher.subscribe(
                [migrations.MIGRATIONS_CHANNEL], migrations.log_migration_notice
            )

    async def __aenter__(self) -> AgentMessaging[T]:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def db(self) -> Database:
        """The connector (raises if not initialized)."""
        if self._db is None:
            raise RuntimeError(
                "AgentMessaging is not initialized: use 'async with' or initialize()"
            )
        return self._db

    @property
    def dispatcher(self) -> Dispatcher:
        """The notification dispatcher (raises if not initialized)."""
        if self._dispatcher is None:
            raise RuntimeError(
                "AgentMessaging is not initialized: use 'async with' or initialize()"
            )
        return self._dispatcher

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction[T]]:
        """One transaction of the application's own SQL and SDK sends::

            async with sdk.transaction() as tx:
                await tx.execute("UPDATE orders SET paid = true WHERE id = $1", [order])
                await tx.one_way.send("billing", "shipping", {"order": order})

        Commits when the block ends, rolls back when it raises: a rollback sends
        nothing, the commit makes the rows, the messages and their notifications
        visible together. The transaction holds one pool connection for the block.
        ``send_and_wait`` is refused inside (:class:`TransactionError`).
        """
        from .transaction import Transaction

        async with self.db.transaction() as tx:
            yield Transaction(self, tx)

    @property
    def message_adapter(self) -> TypeAdapter[Any]:
        """The pydantic adapter for ``T``; untyped, any JSON with objects as
        :class:`AttrDict`."""
        return self.codec.adapter

    def _message_type(self) -> Any:
        """``T``: ``message_type=``, ``AgentMessaging[T]()``, or a subclass's
        ``AgentMessaging[T]`` base; ``None`` when untyped."""
        if self._explicit_type is not None:
            return self._explicit_type
        # AgentMessaging[Model]() records Model on the instance after __init__
        orig = getattr(self, "__orig_class__", None)
        args = get_args(orig) if orig is not None else ()
        if args:
            return args[0]
        for klass in type(self).__mro__:
            for base in getattr(klass, "__orig_bases__", ()):
                origin = get_origin(base)
                if isinstance(origin, type) and issubclass(origin, AgentMessaging):
                    found = get_args(base)
                    if found and not isinstance(found[0], TypeVar):
                        return found[0]
        return None

    def decode_content(self, message_type: str, value: Any) -> Any:
        """Stored content as handed to users: the protocol's own types for meeting
        invitations and system messages, ``T`` for everything agents said."""
        return self.codec.decode_content(message_type, value)

    @property
    def handlers(self) -> dict[str, Handler]:
        """The handlers registered in this process, by agent external id."""
        return self.handler_registry.handlers

    @property
    def serve_error(self) -> BaseException | None:
        """The last error of serving handlers in the background (also logged;
        raised again by the next :meth:`serve_handlers`)."""
        return self.handler_registry.serve_error

    @property
    def turn_sweeper(self) -> TurnSweeper | None:
        """This process's turn sweeper (``None`` if ``config.enable_turn_timeout``
        is false or the SDK is not initialized)."""
        return self._sweeper

    def poke_delivery(self, recipient_external_id: str) -> None:
        """Something was just stored for this agent: if its handler runs in this
        process, look for it now rather than when the NOTIFY comes back."""
        self.handler_registry.poke(recipient_external_id)

    async def drain(self, timeout: float | None = None) -> bool:
        """Deliver what is claimable now for this process's handlers and wait until
        every running handler has finished; True if done within ``timeout`` seconds.
        (``close()`` does this, bounded by ``config.shutdown_timeout``.)"""
        return await self.handler_registry.drain(timeout)

    # -- turn deadlines (see turn_sweeper.TurnSweeper) ---------------------------

    async def turn_sweeper_watch(self, meeting_id: UUID) -> None:
        """Let this process's turn sweeper hear of every turn of the meeting."""
        if self._sweeper is not None:
            await self._sweeper.watch(meeting_id)

    async def turn_sweeper_unwatch(self, meeting_id: UUID) -> None:
        """The meeting ended: the sweeper stops listening to it."""
        if self._sweeper is not None:
            await self._sweeper.unwatch(meeting_id)

    def turn_sweeper_note(self, seconds_left: float) -> None:
        """A turn deadline this process read: expire the turn then."""
        if self._sweeper is not None:
            self._sweeper.note(seconds_left)

    async def agent_channel(self, external_id: str) -> str:
        """The channel an agent's notifications arrive on (``amp.agent_channel``),
        cached: an agent's id, and so its channel, never changes."""
        return await self.directory.agent_channel(external_id)

    def message_args(
        self, sender: str, recipient: str, message: Any, metadata: dict[str, Any] | None
    ) -> list[Any]:
        """``[sender, recipient, content, metadata]`` for an ``amp.*`` call that stores
        a message (:meth:`content.Codec.message_args`)."""
        return self.codec.message_args(sender, recipient, message, metadata)

    # -- handlers ----------------------------------------------------------

    def register_handler(
        self, agent_external_id: str
    ) -> Callable[
        [Callable[[T, MessageContext], Awaitable[T | None]]],
        Callable[[T, MessageContext], Awaitable[T | None]],
    ]:
        """Decorator: run this coroutine for messages pushed to the agent.

        ``async def handler(message: T, context: MessageContext) -> T | None``. It
        gets one-way messages, sync requests (``context.requires_reply``; returning
        a value replies) and meeting invitations (``context.is_meeting_message``),
        at least once. A handler that raises is retried with backoff, then the
        message is marked failed (``amp.failed_deliveries``). Registering makes this
        process serve the agent (any number of processes may serve the same one):
        at once inside ``async with`` (in the background: errors, such as an unknown
        agent, are logged, kept in :attr:`serve_error` and raised by the next
        :meth:`serve_handlers`), or on :meth:`initialize`. With
        ``config.auto_invoke_handlers`` false, only :meth:`serve_handlers` serves.
        Meeting invitations arrive as :class:`MeetingInvitation`, not as ``T``.
        """

        def register(
            handler: Callable[[T, MessageContext], Awaitable[T | None]],
        ) -> Callable[[T, MessageContext], Awaitable[T | None]]:
            self.handler_registry.register(agent_external_id, handler)
            return handler

        return register

    async def serve_handlers(self) -> None:
        """Wait until every registered handler is served: its agent recorded in
        ``amp.worker_agents``, its channel LISTENed, pending messages being claimed.
        (Handlers registered inside ``async with`` are served without it; this waits
        for that to finish.)

        Raises :class:`AgentNotFoundError` for a handler of an unknown agent.
        """
        await self.handler_registry.serve()

    async def _reply_from_handler(self, context: MessageContext, answer: Any) -> bool:
        """A sync request's handler returned ``answer``: send it as the reply (True
        if stored)."""
        return await self.sync_conversation.reply_from_handler(context, answer)

    @property
    def one_way(self) -> OneWayMessenger[T]:
        """The one-way pattern: durable, fire-and-forget messages pushed to handlers."""
        if self._one_way is None:
            from .one_way import OneWayMessenger

            self._one_way = OneWayMessenger(self)
        return self._one_way

    @property
    def async_conversation(self) -> AsyncConversation[T]:
        """The async conversation pattern: an inbox with read state."""
        if self._async_conversation is None:
            from .async_conversation import AsyncConversation

            self._async_conversation = AsyncConversation(self)
        return self._async_conversation

    @property
    def sync_conversation(self) -> SyncConversation[T]:
        """The sync conversation pattern: ask and wait for the answer."""
        if self._sync_conversation is None:
            from .sync_conversation import SyncConversation

            self._sync_conversation = SyncConversation(self)
        return self._sync_conversation

    @property
    def meeting(self) -> MeetingManager[T]:
        """The meeting pattern: create, attend, start, speak, leave, end."""
        if self._meeting is None:
            from .meeting_manager import MeetingManager

            self._meeting = MeetingManager(self)
        return self._meeting

    # -- meeting events ------------------------------------------------------

    def register_event_handler(
        self, event_type: MeetingEvent
    ) -> Callable[[EventHandler], EventHandler]:
        """Decorator: call ``handler(meeting_id, agent_external_id, data)`` for every
        meeting event of ``event_type`` recorded from now on (by any process)::

            @sdk.register_event_handler(MeetingEvent.AGENT_TIMED_OUT)
            async def on_timeout(meeting_id, agent_external_id, data): ...

        The four-argument form of the planning's architecture document,
        ``handler(event_type, meeting_id, agent_external_id, data)``, works as well
        (told apart by the number of positional parameters).

        ``data`` is the event's JSON (``agent_spoke`` carries the content as
        ``data["message"]``). Errors in handlers are logged and do not stop others.
        """
        event = MeetingEvent(event_type)

        def decorator(handler: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
            call: EventHandler = handler
            if _positional_count(handler) >= 4:

                async def four(meeting_id: UUID, agent: str | None, data: dict[str, Any]) -> None:
                    await handler(event, meeting_id, agent, data)

                call = four
            self._events.add(event, call)
            if self._db is not None:
                self._events.start(self.db, self.dispatcher, self.config.poll_interval)
            return handler

        return decorator

    async def events_ready(self) -> None:
        """Wait until the event relay (if handlers are registered) is listening, so
        events caused after this call reach the handlers."""
        await self._events.ready()

    # -- organizations and agents -----------------------------------------

    async def prune(
        self, older_than: timedelta | None = None, batch_size: int = 1000
    ) -> PruneResult:
        """Remove history older than ``older_than`` (default: ``config.retention``,
        else the database's ``amp.retention``, 30 days) in short batches that never
        block live traffic: ended meetings and conversations, settled messages.
        Pending deliveries, unread messages and live meetings always stay."""
        from . import retention

        if older_than is None and self.config.retention is not None:
            older_than = retention.parse_duration(self.config.retention)
        return await retention.prune(self.db, older_than, batch_size)

    async def register_organization(self, external_id: str, name: str | None = None) -> UUID:
        """Register an organization; returns its id.

        Raises :class:`OrganizationAlreadyExistsError`, :class:`InvalidInputError`.
        """
        return await self.directory.register_organization(external_id, name)

    async def register_agent(
        self, external_id: str, organization_external_id: str, name: str | None = None
    ) -> UUID:
        """Register an agent of an organization; returns its id.

        Raises :class:`AgentAlreadyExistsError`, :class:`OrganizationNotFoundError`,
        :class:`InvalidInputError`.
        """
        return await self.directory.register_agent(external_id, organization_external_id, name)

    async def get_organization(self, external_id: str) -> Organization:
        """The organization with that external id, or :class:`OrganizationNotFoundError`."""
        return await self.directory.get_organization(external_id)

    async def get_agent(self, external_id: str) -> Agent:
        """The agent with that external id, or :class:`AgentNotFoundError`."""
        return await self.directory.get_agent(external_id)

    # -- lookups of the planning's models -------------------------------------

    async def get_session(
        self,
        agent_external_id: str,
        other_external_id: str,
        session_type: SessionType | str = SessionType.SYNC,
    ) -> Session:
        """The latest conversation of the two agents of that type (ended or not).

        Raises :class:`SessionNotFoundError`, :class:`AgentNotFoundError`.
        """
        row = await self.db.fetch_one(
            queries.GET_SESSION,
            [agent_external_id, other_external_id, str(SessionType(session_type))],
        )
        return Session.model_validate(row)

    async def get_message(self, message_id: UUID) -> Message[T]:
        """One stored message; its ``content`` decoded as ``T`` (or as the protocol's
        own type for invitations and system messages). Raises
        :class:`InvalidInputError` if there is none with that id."""
        row = await self.db.fetch_one(queries.GET_MESSAGE, [message_id])
        return Message[T].model_validate(
            row | {"content": self.decode_content(row["message_type"], row["content"])}
        )


def _positional_count(func: Callable[..., Any]) -> int:
    """How many positional arguments ``func`` takes (3 for ``*args``)."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return 3
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 3
    return sum(1 for p in params if p.kind in kinds)
