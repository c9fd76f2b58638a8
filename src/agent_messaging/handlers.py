"""The handler registry: which agents this process serves, and serving them.

Handlers are registered by agent (``@sdk.register_handler("bob")``); once the SDK
is initialized they are served by its :class:`~agent_messaging.delivery.DeliveryWorker`
(the agent recorded in ``amp.worker_agents``, its channel LISTENed, its pending
messages claimed). Handlers registered after the start are served by background
tasks: each task's error is logged and kept (:attr:`HandlerRegistry.errors`, none
overwritten), raised again by the next :meth:`HandlerRegistry.serve`, and logged
once more at :meth:`HandlerRegistry.close` if nobody asked for it.
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
            self._serve_in_background([agent_external_id])

    def _serve_in_background(self, agents: list[str]) -> None:
        assert self._delivery is not None
        task = asyncio.ensure_future(self._serve(agents))
        self._serving.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._serving.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                error = finished.exception()
                assert error is not None
                self.errors.append(error)
                log.error("serving the handlers of %s failed: %r", agents, error)

        task.add_done_callback(done)

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

    async def close(self, grace: float) -> None:
        """Close the delivery worker (handing back after ``grace`` s what is not
        done). Background errors nobody asked for are logged again, so none goes
        unreported."""
        for error in self.errors:
            log.error("closing with an unreported error of serving handlers: %r", error)
        if self._delivery is not None:
            await self._delivery.close(grace=grace)
            self._delivery = None
