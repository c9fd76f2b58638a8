"""The handler registry: which agents this process serves, and serving them.

Handlers are registered by agent (``@sdk.register_handler("bob")``); once the SDK
is initialized they are served by its :class:`~agent_messaging.delivery.DeliveryWorker`
(the agent recorded in ``amp.worker_agents``, its channel LISTENed, its pending
messages claimed). Handlers registered after the start are served in the
background, those registered together (before the event loop next runs) by one
task in one batch, so that registering a thousand handlers costs a few statements,
not a thousand tasks and three thousand round trips. When a batch fails it is
served again agent by agent: each agent's error is logged and kept
(:attr:`HandlerRegistry.errors`, none overwritten), the other agents are served
(as if each had been served on its own), the error is raised again by the next
:meth:`HandlerRegistry.serve`, and logged once more at
:meth:`HandlerRegistry.close` if nobody asked for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from . import tasks
from .delivery import DeliveryWorker, Handler

log = logging.getLogger("agent_messaging.handlers")


class HandlerRegistry:
    """The handlers of one SDK instance and the tasks serving them."""

    def __init__(self) -> None:
        #: handlers registered in this process, by agent external id
        self.handlers: dict[str, Handler] = {}
        self._delivery: DeliveryWorker | None = None
        self._auto_serve = True
        self._serving: set[asyncio.Task[None]] = set()
        #: agents registered since the last background batch started, in order
        #: (``None``: no batch waiting to start)
        self._batch: dict[str, None] | None = None
        #: errors of background serving not yet raised by :meth:`serve`, oldest first
        self.errors: list[BaseException] = []
        #: called after agents are served (the client hears migrations from then on)
        self.on_served: Callable[[], Awaitable[None]] | None = None

    @property
    def serve_error(self) -> BaseException | None:
        """The last error of serving handlers in the background (also logged)."""
        return self.errors[-1] if self.errors else None

    def attach(self, delivery: DeliveryWorker, auto_serve: bool) -> None:
        """Serve through ``delivery`` from now on; ``auto_serve``: handlers
        registered from now on are served at once, in the background."""
        self._delivery = delivery
        self._auto_serve = auto_serve

    def register(self, agent_external_id: str, handler: Handler) -> None:
        """Record ``handler`` for the agent (replacing an earlier one) and, when
        attached with ``auto_serve``, serve it in the background."""
        self.handlers[agent_external_id] = handler
        if self._delivery is not None and self._auto_serve:
            if self._batch is None:
                self._batch = {}
                self._serve_in_background(self._batch)
            self._batch[agent_external_id] = None

    def _serve_in_background(self, batch: dict[str, None]) -> None:
        """Serve ``batch`` in a task (agents join it until the task starts)."""
        assert self._delivery is not None
        task = asyncio.ensure_future(self._serve_batch(batch))
        self._serving.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._serving.discard(finished)
            if self._batch is batch:  # cancelled before it started
                self._batch = None
            if not finished.cancelled() and finished.exception() is not None:
                error = finished.exception()
                assert error is not None
                self._failed(list(batch), error)

        task.add_done_callback(done)

    async def _serve_batch(self, batch: dict[str, None]) -> None:
        if self._batch is batch:
            self._batch = None  # closed: agents registered from now on start another
        agents = list(batch)
        try:
            await self._serve(agents)
        except Exception:
            if len(agents) == 1:
                raise
            # one statement serves the whole batch, so one unknown agent fails it:
            # serve each alone, reporting each agent's own error
            for agent in agents:
                try:
                    await self._serve([agent])
                except Exception as error:
                    self._failed([agent], error)

    def _failed(self, agents: list[str], error: BaseException) -> None:
        self.errors.append(error)
        log.error("serving the handlers of %s failed: %r", agents, error)

    async def serve(self) -> None:
        """Wait for background serving to finish, then serve every registered
        handler (raising what serving them raises, such as
        :class:`AgentNotFoundError`, which includes the background errors met
        before: they were about these same handlers)."""
        if self._delivery is None:
            raise RuntimeError(
                "AgentMessaging is not initialized: use 'async with' or initialize()"
            )
        if self._serving:
            await asyncio.wait(set(self._serving))
        self.errors.clear()
        await self._serve(list(self.handlers))

    async def _serve(self, agents: list[str]) -> None:
        assert self._delivery is not None
        await self._delivery.serve(agents)
        if self.on_served is not None:
            await self.on_served()

    @property
    def delivery(self) -> DeliveryWorker | None:
        """The delivery worker serving the handlers (``None`` before the start)."""
        return self._delivery

    def poke(self, recipient_external_id: str) -> None:
        """Something was just stored for this agent: if its handler runs in this
        process, look for it now rather than when the NOTIFY comes back."""
        delivery = self._delivery
        if delivery is not None and recipient_external_id in delivery.served:
            delivery.poke()

    async def drain(self, timeout: float | None = None) -> bool:
        """Deliver what is claimable now and wait for running handlers; True if
        done within ``timeout`` seconds."""
        if self._serving:
            await asyncio.wait(set(self._serving), timeout=timeout)
        if self._delivery is None:
            return True
        return await self._delivery.drain(timeout)

    async def stop_serving(self, timeout: float) -> None:
        """Let background serving finish (up to ``timeout`` s), then stop it."""
        if self._serving:
            # handlers registered just now are served before draining
            await asyncio.wait(set(self._serving), timeout=timeout)
        for task in list(self._serving):
            await tasks.stop(task)
        self._serving.clear()
        self._batch = None

    async def close(self, grace: float) -> None:
        """Close the delivery worker (handing back after ``grace`` s what is not
        done). Background errors nobody asked for are logged again, so none goes
        unreported."""
        for error in self.errors:
            log.error("closing with an unreported error of serving handlers: %r", error)
        if self._delivery is not None:
            await self._delivery.close(grace=grace)
            self._delivery = None
