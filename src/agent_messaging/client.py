"""``AgentMessaging``: the SDK's entry point.

It resolves the server (configured or embedded), applies pending migrations, opens
the psqlpy pool and the notification dispatcher, and hands out the messaging
patterns. Everything it does to state is a call of an ``amp.*`` SQL function.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar, get_args
from uuid import UUID

from pydantic import TypeAdapter

from . import agents, content, migrations, tasks
from .config import Config
from .conversations import SyncConversation
from .database import Database, resolve_dsn
from .delivery import DeliveryWorker, Handler
from .dispatcher import Dispatcher
from .inbox import AsyncConversation
from .meeting_events import EventHandler, EventRelay
from .meetings import MeetingManager
from .models import Agent, MeetingEvent, MessageContext, Organization
from .one_way import OneWayMessenger

T = TypeVar("T")
log = logging.getLogger("agent_messaging")


class AgentMessaging(Generic[T]):
    """One SDK instance: a pool, a listener, and the four messaging patterns.

    ``T`` is the type of message content (a pydantic model, ``dict``, ``str``...);
    content is stored as JSONB and validated back into ``T`` on receipt. Use as an
    async context manager, or call :meth:`initialize` and :meth:`close`::

        async with AgentMessaging[dict]() as sdk:
            await sdk.register_organization("acme", "Acme")
    """

    def __init__(self, config: Config | None = None, *, message_type: Any = None) -> None:
        self.config = config or Config()
        self._explicit_type = message_type
        self._adapter: TypeAdapter[Any] | None = None
        self._db: Database | None = None
        self._dispatcher: Dispatcher | None = None
        self._delivery: DeliveryWorker | None = None
        self._serving: asyncio.Task[None] | None = None
        self._channels: dict[str, str] = {}
        #: handlers registered in this process, by agent external id
        self.handlers: dict[str, Handler] = {}
        self.one_way: OneWayMessenger[T] = OneWayMessenger(self)
        self.async_conversation: AsyncConversation[T] = AsyncConversation(self)
        self.sync_conversation: SyncConversation[T] = SyncConversation(self)
        self._meeting: MeetingManager[T] | None = None
        self._event_handlers: dict[MeetingEvent, list[EventHandler]] = {}
        self._relay: EventRelay | None = None
        self._relay_start: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------

    async def initialize(self) -> None:
        """Connect (starting the embedded server if none is configured), migrate
        unless ``config.apply_migrations`` is false, and start listening."""
        if self._db is not None:
            return
        dsn = await resolve_dsn(self.config)
        db = Database.connect(dsn, self.config.max_pool_size)
        try:
            if self.config.apply_migrations:
                await migrations.ensure_migrated(db)
            else:
                await migrations.check_compatible(db)
            dispatcher = Dispatcher(db, check_interval=self.config.listener_check_interval)
            await dispatcher.start()
            # a migration by another process is logged (newer and breaking: an error)
            await dispatcher.subscribe(
                [migrations.MIGRATIONS_CHANNEL], migrations.log_migration_notice
            )
        except BaseException:
            await db.close()
            raise
        self._db, self._dispatcher = db, dispatcher
        self._delivery = DeliveryWorker(
            db,
            dispatcher,
            self.config,
            lambda: self.message_adapter,
            self.handlers,
            reply_hook=self._reply_from_handler,
        )
        if self.handlers:
            await self.serve_handlers()
        self._sweeper = asyncio.create_task(self._sweep(), name="amp-turn-sweep")
        if self._event_handlers:
            self._start_relay()
            await self.events_ready()

    async def close(self) -> None:
        """Stop delivering (running handlers get a grace period), stop listening and
        close the pool. Safe to call twice."""
        for task in (self._sweeper, self._relay_start, self._serving):
            await tasks.stop(task)
        self._sweeper = self._relay_start = self._serving = None
        if self._relay is not None:
            with contextlib.suppress(Exception):
                await self._relay.close()
            self._relay = None
        if self._delivery is not None:
            await self._delivery.close()
            self._delivery = None
        if self._dispatcher is not None:
            await self._dispatcher.close()
            self._dispatcher = None
        if self._db is not None:
            await self._db.close()
            self._db = None

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

    @property
    def message_adapter(self) -> TypeAdapter[Any]:
        """The pydantic adapter for ``T`` (``Any`` when no type was given)."""
        if self._adapter is None:
            message_type = self._explicit_type
            if message_type is None:
                # AgentMessaging[Model]() records Model on the instance after __init__
                orig = getattr(self, "__orig_class__", None)
                args = get_args(orig) if orig is not None else ()
                message_type = args[0] if args else Any
            self._adapter = TypeAdapter(message_type)
        return self._adapter

    async def agent_channel(self, external_id: str) -> str:
        """The channel an agent's notifications arrive on (``amp.agent_channel``),
        cached: an agent's id, and so its channel, never changes."""
        channel = self._channels.get(external_id)
        if channel is None:
            channel = await agents.agent_channel(self.db, external_id)
            self._channels[external_id] = channel
        return channel

    def message_args(
        self, sender: str, recipient: str, message: Any, metadata: dict[str, Any] | None
    ) -> list[Any]:
        """``[sender, recipient, content, metadata]`` for an ``amp.*`` call that stores a
        message: content serialised as ``T`` (refused if not serialisable or larger
        than ``max_message_bytes``), both as JSON text for ``$n::text::jsonb``."""
        body = content.encode(self.message_adapter, message, self.config.max_message_bytes)
        return [sender, recipient, body, content.encode_metadata(metadata)]

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
        process serve the agent (any number of processes may serve the same one).
        """

        def register(
            handler: Callable[[T, MessageContext], Awaitable[T | None]],
        ) -> Callable[[T, MessageContext], Awaitable[T | None]]:
            self.handlers[agent_external_id] = handler
            if self._delivery is not None:
                self._serving = asyncio.ensure_future(self._delivery.serve(list(self.handlers)))
            return handler

        return register

    async def serve_handlers(self) -> None:
        """Wait until every registered handler is served: its agent recorded in
        ``amp.worker_agents``, its channel LISTENed, pending messages being claimed.

        Raises :class:`AgentNotFoundError` for a handler of an unknown agent.
        """
        if self._delivery is None:
            raise RuntimeError(
                "AgentMessaging is not initialized: use 'async with' or initialize()"
            )
        await self._delivery.serve(list(self.handlers))

    async def _reply_from_handler(self, context: MessageContext, answer: Any) -> None:
        """A sync request's handler returned ``answer``: send it as the reply."""
        await self.sync_conversation.reply_from_handler(context, answer)

    @property
    def meeting(self) -> MeetingManager[T]:
        """The meeting pattern: create, attend, start, speak, leave, end."""
        if self._meeting is None:
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

        ``data`` is the event's JSON (``agent_spoke`` carries the content as
        ``data["message"]``). Errors in handlers are logged and do not stop others.
        """
        event = MeetingEvent(event_type)

        def decorator(handler: EventHandler) -> EventHandler:
            self._event_handlers.setdefault(event, []).append(handler)
            if self._db is not None:
                self._start_relay()
            return handler

        return decorator

    def _start_relay(self) -> None:
        if self._relay is None:
            self._relay = EventRelay(
                self.db, self.dispatcher, poll_interval=self.config.poll_interval
            )
            self._relay.handlers = self._event_handlers
            self._relay_start = asyncio.get_running_loop().create_task(self._relay.start())

    async def events_ready(self) -> None:
        """Wait until the event relay (if handlers are registered) is listening, so
        events caused after this call reach the handlers."""
        task = self._relay_start
        if task is not None:
            await asyncio.shield(task)

    async def _sweep(self) -> None:
        """Expire overdue meeting turns every ``poll_interval``, so meetings whose
        participants' processes died still go on."""
        while True:
            await asyncio.sleep(self.config.poll_interval)
            try:
                await self.db.fetch_value("SELECT amp.expire_turns() AS n")
            except Exception as exc:
                log.warning("turn sweep failed: %s", exc)

    # -- organizations and agents -----------------------------------------

    async def register_organization(self, external_id: str, name: str | None = None) -> UUID:
        """Register an organization; returns its id.

        Raises :class:`OrganizationAlreadyExistsError`, :class:`InvalidInputError`.
        """
        return (await agents.register_organization(self.db, external_id, name)).id

    async def register_agent(
        self, external_id: str, organization_external_id: str, name: str | None = None
    ) -> UUID:
        """Register an agent of an organization; returns its id.

        Raises :class:`AgentAlreadyExistsError`, :class:`OrganizationNotFoundError`,
        :class:`InvalidInputError`.
        """
        agent = await agents.register_agent(self.db, external_id, organization_external_id, name)
        return agent.id

    async def get_organization(self, external_id: str) -> Organization:
        """The organization with that external id, or :class:`OrganizationNotFoundError`."""
        return await agents.get_organization(self.db, external_id)

    async def get_agent(self, external_id: str) -> Agent:
        """The agent with that external id, or :class:`AgentNotFoundError`."""
        return await agents.get_agent(self.db, external_id)
