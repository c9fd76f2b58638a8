"""The notification dispatcher: one LISTEN connection per SDK process.

It owns a psqlpy ``Listener``, LISTENs on every channel someone subscribed to, and
routes each parsed payload to the callbacks of its channel. Channels can be added
and removed at run time (``LISTEN`` is executed on the listener's own connection,
because psqlpy 0.13 does not pick up callbacks added after ``listen()``).

Connections drop and notifications get lost, so:

* a health check sends a NOTIFY round trip to the dispatcher's own channel every
  ``check_interval`` seconds; no echo means the listener is dead (psqlpy may stop
  delivering silently when its backend is terminated);
* a dead listener is rebuilt with backoff, every channel is LISTENed again, and
  then the registered catch-up callbacks run, so waiters re-read the tables for
  whatever was notified while nobody was listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable

import psqlpy

from . import notifications, tasks
from .database import Database

log = logging.getLogger("agent_messaging.dispatcher")

AnyNotification = notifications.Known | notifications.Unknown
#: Called synchronously on the event loop for each notification; must not block.
Callback = Callable[[str, AnyNotification], None]
CatchUp = Callable[[], Awaitable[None]]


class Dispatcher:
    """Routes notifications of many channels over one listener connection."""

    def __init__(self, db: Database, *, check_interval: float = 5.0) -> None:
        self._db = db
        self._check_interval = check_interval
        self._subs: dict[str, list[Callback]] = {}
        #: channels LISTENed on the current (and every future) listener connection
        self._listening: set[str] = set()
        self._catch_ups: list[CatchUp] = []
        self._lock = asyncio.Lock()
        self._listener: psqlpy.Listener | None = None
        self._connected = asyncio.Event()
        self._pongs: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: this process's own channel, used for the health check
        self.channel = f"amp_worker_{uuid.uuid4().hex}"
        #: how many times the listener was rebuilt after losing its connection
        self.reconnects = 0

    # -- lifecycle ---------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Start listening; returns once the first connection LISTENs."""
        self._task = asyncio.create_task(self._run(), name="amp-dispatcher")
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def close(self) -> None:
        """Stop listening and release the connection."""
        self._closing = True
        await tasks.stop(self._task)
        self._task = None

    @property
    def connected(self) -> bool:
        """Whether a listener connection is up right now."""
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a listener connection is up."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    # -- subscriptions -----------------------------------------------------

    async def subscribe(self, channels: Iterable[str], callback: Callback) -> None:
        """Route notifications of ``channels`` to ``callback`` (LISTEN if new).

        When this returns the channels are LISTENed, or the listener is down and
        will LISTEN them (then run the catch-ups) when it is back. A channel once
        LISTENed stays LISTENed: waits on the same agent come and go quickly, and a
        LISTEN/UNLISTEN round trip on each would sit on every wait's critical path.
        """
        channels = list(channels)
        for channel in channels:
            self._subs.setdefault(channel, []).append(callback)
        if all(channel in self._listening for channel in channels):
            return
        async with self._lock:
            fresh = [c for c in dict.fromkeys(channels) if c not in self._listening]
            if not fresh:
                return
            self._listening.update(fresh)  # a reconnect LISTENs them if this fails
            if self._listener is not None:
                try:
                    await self._listener.connection.execute("SELECT amp.listen($1)", [fresh])
                except psqlpy.Error as exc:
                    # the run loop notices the dead connection and re-LISTENs all
                    log.warning("LISTEN failed, listener will be rebuilt: %s", exc)

    async def unsubscribe(
        self, channels: Iterable[str], callback: Callback, keep_listening: bool = True
    ) -> None:
        """Stop routing ``channels`` to ``callback``. The channels stay LISTENed
        unless ``keep_listening`` is false (for channels that will not be used again,
        such as an ended meeting's) and nobody else uses them."""
        unused = []
        for channel in channels:
            callbacks = self._subs.get(channel, [])
            with contextlib.suppress(ValueError):
                callbacks.remove(callback)
            if not callbacks:
                self._subs.pop(channel, None)
                if not keep_listening and channel in self._listening:
                    unused.append(channel)
        if not unused:
            return
        async with self._lock:
            unused = [c for c in unused if c not in self._subs]
            self._listening.difference_update(unused)
            if unused and self._listener is not None:
                with contextlib.suppress(psqlpy.Error):
                    await self._listener.connection.execute("SELECT amp.unlisten($1)", [unused])

    def subscribed(self, channel: str) -> bool:
        """Whether someone in this process listens on ``channel``."""
        return channel in self._subs

    def add_catch_up(self, callback: CatchUp) -> None:
        """Run ``callback`` after every reconnect (to re-read the tables)."""
        self._catch_ups.append(callback)

    def remove_catch_up(self, callback: CatchUp) -> None:
        """Forget a catch-up callback."""
        with contextlib.suppress(ValueError):
            self._catch_ups.remove(callback)

    # -- health ------------------------------------------------------------

    async def ping(self, timeout: float) -> bool:
        """NOTIFY this process's own channel and wait for the echo."""
        token = uuid.uuid4().hex
        echo: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs[token] = echo
        try:
            payload = notifications.Ping(kind="ping", token=token).model_dump_json()
            await self._db.execute("SELECT pg_notify($1, $2)", [self.channel, payload])
            await asyncio.wait_for(echo, timeout)
            return True
        except (TimeoutError, psqlpy.Error):
            return False
        finally:
            self._pongs.pop(token, None)

    async def backend_pid(self) -> int | None:
        """The server process id of the listener connection (for diagnostics)."""
        listener = self._listener
        if listener is None:
            return None
        rows = (await listener.connection.execute("SELECT pg_backend_pid() AS pid")).result()
        return int(rows[0]["pid"])

    # -- the loop ----------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.05
        first = True
        while not self._closing:
            listener: psqlpy.Listener | None = None
            try:
                listener = self._db.listener()
                await listener.startup()
                async with self._lock:
                    channels = [self.channel, *self._listening]
                    await listener.connection.execute("SELECT amp.listen($1)", [channels])
                    self._listener = listener
                self._connected.set()
                if not first:
                    self.reconnects += 1
                    log.info("listener reconnected; catching up from the tables")
                    await self._run_catch_ups()
                first = False
                delay = 0.05
                await self._serve(listener)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listener connection failed: %s", exc)
            finally:
                self._connected.clear()
                self._listener = None
                if listener is not None:
                    with contextlib.suppress(Exception):
                        await listener.shutdown()
            if not self._closing:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _serve(self, listener: psqlpy.Listener) -> None:
        """Read notifications until the connection is found dead."""
        reader = asyncio.create_task(self._read(listener))
        checker = asyncio.create_task(self._check())
        try:
            done, _ = await asyncio.wait({reader, checker}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    log.warning("listener lost: %s", task.exception())
        finally:
            for task in (reader, checker):
                await tasks.stop(task)

    async def _read(self, listener: psqlpy.Listener) -> None:
        async for message in listener:
            self._route(message.channel, message.payload)

    async def _check(self) -> None:
        while True:
            await asyncio.sleep(self._check_interval)
            if not await self.ping(timeout=self._check_interval):
                log.warning("listener health check got no echo; rebuilding it")
                return

    async def _run_catch_ups(self) -> None:
        for callback in list(self._catch_ups):
            try:
                await callback()
            except Exception:
                log.exception("catch-up callback failed")

    def _route(self, channel: str, payload: str) -> None:
        notification = notifications.parse(payload)
        if isinstance(notification, notifications.Ping):
            echo = self._pongs.get(notification.token)
            if echo is not None and not echo.done():
                echo.set_result(None)
            return
        for callback in list(self._subs.get(channel, ())):
            try:
                callback(channel, notification)
            except Exception:
                log.exception("notification callback failed")
