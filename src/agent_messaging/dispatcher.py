"""The notification dispatcher: at most one LISTEN connection per SDK process.

It listens only while someone in the process needs it: it connects on the first
:meth:`Dispatcher.subscribe` (a handler served, a wait, an event relay) and, once
nobody is subscribed any more, closes the connection after ``linger`` seconds (so
that back-to-back waits do not pay a new connection and LISTEN each). A process that
only sends never LISTENs: every idle listener in a database slows every notifying
commit of that database (PostgreSQL up to 18 signals all of its listening backends).
:meth:`Dispatcher.start` instead listens at once and until :meth:`Dispatcher.close`.

While listening it owns a LISTEN connection (:class:`database.Listener`), LISTENs on every channel
someone subscribed to, and routes each parsed payload to the callbacks of its
channel. Channels can be added and removed at run time (``LISTEN`` is executed on
the listener's own connection, because psqlpy 0.13 does not pick up callbacks
added after ``listen()``).

Connections drop and notifications get lost, so:

* a health check sends a NOTIFY round trip to the dispatcher's own channel every
  ``check_interval`` seconds, over the listener's own connection (so a busy or
  failing pool cannot make a healthy listener look dead); no echo means the listener
  is dead (psqlpy may stop delivering silently when its backend is terminated);
* a dead listener is rebuilt with backoff, every channel is LISTENed again, and
  then the registered catch-up callbacks run, so waiters re-read the tables for
  whatever was notified while nobody was listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeAlias, TypeVar

from . import notifications, tasks
from .database import Database, Listener
from .exceptions import TRANSIENT_ERRORS, AgentMessagingError

if TYPE_CHECKING:
    # loaded only by a dispatcher that shares the listener (``share_dir``)
    from .hub import SharedListener, ShareState

log = logging.getLogger("agent_messaging.dispatcher")

AnyNotification = notifications.Known | notifications.Unknown
#: Called synchronously on the event loop for each notification; must not block.
Callback = Callable[[str, AnyNotification], None]
CatchUp = Callable[[], Awaitable[None]]
AnyListener: TypeAlias = "Listener | SharedListener"
#: which notifications wake a wait (``None``: every one)
Wanted = Callable[[AnyNotification], bool]
R = TypeVar("R")

#: what a wait rides out by checking again until its deadline (a lost connection,
#: a server restart, a check that ran out of time)
RETRIED: tuple[type[Exception], ...] = (TimeoutError, *TRANSIENT_ERRORS)


@dataclass(frozen=True, slots=True)
class Outcome(Generic[R]):
    """What a wait's check found: the wait is over, with ``value``. A check returns
    ``None`` instead while the thing waited for has not happened yet."""

    value: R


#: a wait's check: called with the seconds left until the deadline (``None``: no
#: deadline) to bound its statement; returns an :class:`Outcome` once the wait is
#: over, ``None`` to keep waiting, or raises to end the wait with an error
Check = Callable[[float | None], Awaitable[Outcome[R] | None]]


class Wait:
    """One listen -> check -> wait -> re-check loop (:meth:`Dispatcher.waiting`).

    It is subscribed to its channels and registered for catch-ups while the
    ``async with`` block runs; :meth:`until` checks and waits.
    """

    def __init__(self, wanted: Wanted | None) -> None:
        self._wanted = wanted
        self._woken = asyncio.Event()
        #: channels of the wait that will not be used again (an ended meeting's):
        #: UNLISTENed on exit unless someone else uses them (the others stay LISTENed)
        self.done_with: set[str] = set()

    def _on_notify(self, _channel: str, notification: AnyNotification) -> None:
        if self._wanted is None or self._wanted(notification):
            self._woken.set()

    async def _catch_up(self) -> None:
        # the listener was rebuilt: whatever was notified meanwhile is lost, re-check
        self._woken.set()

    def wake(self) -> None:
        """Re-check now (as if a wanted notification had come)."""
        self._woken.set()

    async def until(
        self,
        check: Check[R],
        deadline: float | None,
        poll: float,
        *,
        check_first: bool = True,
        retried: tuple[type[Exception], ...] = RETRIED,
    ) -> Outcome[R] | None:
        """Check; until the check returns an outcome, wait for a wanted notification
        (or ``poll`` seconds, the fallback for a lost one) and check again. Returns
        the outcome, or ``None`` once ``deadline`` (loop time; ``None``: never) has
        passed. Errors in ``retried`` are ridden out: checked again soon (backing
        off up to half a second) until the deadline. ``check_first=False`` waits
        before the first check (for a wait that just caused what it waits for,
        while already listening)."""
        loop = asyncio.get_running_loop()
        retry = 0.05
        pause: float | None = None if check_first else poll
        while True:
            if pause is not None:
                if deadline is not None:
                    pause = min(pause, deadline - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), max(pause, 0.0))
            self._woken.clear()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0 and pause is not None:
                return None
            try:
                outcome = await check(None if remaining is None else max(remaining, 0.001))
            except retried as exc:
                if deadline is not None and loop.time() >= deadline:
                    return None
                log.warning("a wait's check failed, checking again: %s", exc)
                pause = retry
                retry = min(retry * 2, 0.5)
                continue
            retry = 0.05
            if outcome is not None:
                return outcome
            pause = poll


class Dispatcher:
    """Routes notifications of many channels over one listener connection."""

    def __init__(
        self,
        db: Database,
        *,
        check_interval: float = 5.0,
        linger: float = 2.0,
        share_dir: Path | None = None,
    ) -> None:
        self._db = db
        #: share the host's LISTEN connection through sockets in this directory
        #: (:mod:`agent_messaging.hub`); ``None``: a connection of our own
        self._share_dir = share_dir
        self._share: ShareState | None = None
        self._check_interval = check_interval
        self._linger = linger
        #: ``start()`` was called: listen until ``close()``, subscribed or not
        self._pinned = False
        self._idle_timer: asyncio.TimerHandle | None = None
        self._stopper: asyncio.Task[None] | None = None
        #: the callbacks of each channel (tuples: one small object per channel, and
        #: routing needs no copy to let callbacks subscribe and unsubscribe)
        self._subs: dict[str, tuple[Callback, ...]] = {}
        #: channels LISTENed on the current (and every future) listener connection
        self._listening: set[str] = set()
        self._catch_ups: list[CatchUp] = []
        self._lock = asyncio.Lock()
        self._listener: AnyListener | None = None
        self._connected = asyncio.Event()
        self._pongs: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: direct delivery: workers whose presence the LISTEN connection holds, and
        #: their leases in seconds (:meth:`hold`)
        self._presence: dict[uuid.UUID, float] = {}
        #: this process's own channel, used for the health check
        self.channel = f"amp_worker_{uuid.uuid4().hex}"
        #: how many times the listener was rebuilt after losing its connection
        self.reconnects = 0

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start listening now, and keep listening until :meth:`close` (without it,
        the dispatcher listens only while someone is subscribed); returns once the
        connection LISTENs.

        Raises :class:`DatabaseUnavailableError` (or another
        :class:`AgentMessagingError`) if that first connection fails; then nothing
        is left running.
        """
        async with self._lock:
            if self._running:
                self._pinned = True
                return
            await self._start_locked(raise_errors=True)
            self._pinned = True

    async def close(self) -> None:
        """Stop listening and release the connection."""
        self._closing = True
        self._cancel_linger()
        await tasks.stop(self._stopper)
        await tasks.stop(self._task)
        self._task = None

    @property
    def listener_role(self) -> str:
        """How this process listens now: ``own`` (a LISTEN connection of its own),
        ``hub`` (it holds the host's shared one), ``client`` (it subscribes to the
        hub of another process), or ``""`` (not listening)."""
        listener = self._listener
        if listener is None:
            return ""
        return "own" if isinstance(listener, Listener) else listener.role

    @property
    def listening(self) -> bool:
        """Whether the dispatcher runs now (a LISTEN connection is up or being rebuilt)."""
        return self._running

    @property
    def _running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _start_locked(self, raise_errors: bool) -> None:
        """Connect and start the loop (the lock is held). A failed first connection
        raises if ``raise_errors``, else the loop keeps trying in the background
        (and runs the catch-ups once it is connected)."""
        if self._closing:
            if raise_errors:
                raise RuntimeError("the dispatcher is closed")
            return
        listener: AnyListener | None
        try:
            listener = await self._open_listener()
        except AgentMessagingError as exc:
            if raise_errors:
                raise
            log.warning("cannot start listening yet, retrying in the background: %s", exc)
            listener = None
        self._task = asyncio.create_task(self._run(listener), name="amp-dispatcher")

    def _in_use(self) -> bool:
        return self._pinned or bool(self._subs) or bool(self._catch_ups)

    def _cancel_linger(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _maybe_linger(self) -> None:
        """Nobody needs the listener any more: stop it after ``linger`` seconds,
        unless someone subscribes meanwhile."""
        if self._in_use() or self._closing or not self._running or self._idle_timer:
            return
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(self._linger, self._linger_over)

    def _linger_over(self) -> None:
        self._idle_timer = None
        if self._in_use() or self._closing or self._stopper is not None:
            return
        self._stopper = asyncio.get_running_loop().create_task(
            self._stop_if_idle(), name="amp-dispatcher-stop"
        )

    async def _stop_if_idle(self) -> None:
        try:
            async with self._lock:
                if self._in_use() or self._closing:
                    return
                # forget the channels before the first await: a subscribe that comes
                # now finds them not LISTENed and starts a new connection
                self._listening.clear()
                task, self._task = self._task, None
                await tasks.stop(task)
                log.debug("nobody needs the listener: stopped")
        finally:
            self._stopper = None

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
            self._subs[channel] = (*self._subs.get(channel, ()), callback)
        self._cancel_linger()
        if self._running and all(channel in self._listening for channel in channels):
            return
        async with self._lock:
            fresh = [c for c in dict.fromkeys(channels) if c not in self._listening]
            self._listening.update(fresh)  # a reconnect LISTENs them if this fails
            if not self._running:
                # the first subscriber: connect (LISTENing every channel) now
                await self._start_locked(raise_errors=False)
                return
            if not fresh:
                return
            if self._listener is not None:
                try:
                    await self._listener.listen(fresh, self._check_interval)
                except AgentMessagingError as exc:
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
            callbacks = self._subs.get(channel, ())
            if callback in callbacks:
                at = callbacks.index(callback)
                callbacks = callbacks[:at] + callbacks[at + 1 :]
                if callbacks:
                    self._subs[channel] = callbacks
            if not callbacks:
                self._subs.pop(channel, None)
                if not keep_listening and channel in self._listening:
                    unused.append(channel)
        self._maybe_linger()
        if not unused:
            return
        async with self._lock:
            unused = [c for c in unused if c not in self._subs]
            self._listening.difference_update(unused)
            if unused and self._listener is not None:
                with contextlib.suppress(AgentMessagingError):
                    await self._listener.unlisten(unused, self._check_interval)

    @contextlib.asynccontextmanager
    async def waiting(
        self, channels: Sequence[str], wanted: Wanted | None = None
    ) -> AsyncIterator[Wait]:
        """Listen on ``channels`` for a wait (the one wait primitive of the SDK)::

            async with dispatcher.waiting([channel], wanted=is_reply) as wait:
                ...  # cause what is waited for, if need be: we already listen
                outcome = await wait.until(check, deadline, poll)

        Notifications for which ``wanted`` is true (every one if ``None``) and every
        reconnect of the listener wake the wait to re-check. On exit, however the
        block ends, the catch-up is removed and the channels unsubscribed.
        """
        wait = Wait(wanted)
        try:
            await self.subscribe(channels, wait._on_notify)
            self.add_catch_up(wait._catch_up)
            yield wait
        finally:
            self.remove_catch_up(wait._catch_up)
            kept = [c for c in channels if c not in wait.done_with]
            done = [c for c in channels if c in wait.done_with]
            if kept:
                await self.unsubscribe(kept, wait._on_notify)
            if done:
                await self.unsubscribe(done, wait._on_notify, keep_listening=False)

    async def wait_until(
        self,
        channels: Sequence[str],
        check: Check[R],
        deadline: float | None,
        poll: float,
        *,
        wanted: Wanted | None = None,
        retried: tuple[type[Exception], ...] = RETRIED,
    ) -> Outcome[R] | None:
        """:meth:`waiting` and :meth:`Wait.until` in one: listen, check, wait,
        re-check until ``check`` returns an outcome (returned) or the deadline
        passes (``None``)."""
        async with self.waiting(channels, wanted) as wait:
            return await wait.until(check, deadline, poll, retried=retried)

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
        self._maybe_linger()

    # -- presence (direct delivery) ---------------------------------------

    async def hold(self, worker: uuid.UUID, lease: float) -> bool:
        """Direct delivery for ``worker``: ``amp.hold_worker`` on the LISTEN connection
        (the hub's, when shared), whose advisory lock is the worker's presence: it
        goes with that connection, and a hub lets go of it when this process's
        subscription ends, so nothing is handed to a worker whose process or
        connection is gone. Held now if the listener is up, and again on every new
        connection once the catch-ups have run (they hand back what the lost
        connection's hints announced). True if held now."""
        self._presence[worker] = lease
        listener = self._listener
        if listener is not None:
            return await self._hold_on(listener, worker, lease)
        return False

    def drop_presence(self, worker: uuid.UUID) -> None:
        """Hold ``worker`` no more on later connections."""
        self._presence.pop(worker, None)

    async def _hold_on(self, listener: AnyListener, worker: uuid.UUID, lease: float) -> bool:
        try:
            held = await listener.hold(worker, lease, self._check_interval)
        except AgentMessagingError as exc:
            log.warning("could not hold worker %s for direct delivery: %s", worker, exc)
            return False
        if not held:
            log.warning("worker %s is held on another connection (direct delivery there)", worker)
        return held

    async def _hold_all(self, listener: AnyListener) -> None:
        for worker, lease in list(self._presence.items()):
            await self._hold_on(listener, worker, lease)

    # -- health ------------------------------------------------------------

    async def ping(self, timeout: float) -> bool:
        """NOTIFY this process's own channel and wait for the echo.

        The NOTIFY goes over the listener's own connection, not the pool: the
        check proves the listener alive whatever the state of the pool.
        """
        listener = self._listener
        if listener is None:
            return False
        token = uuid.uuid4().hex
        echo: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pongs[token] = echo
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            payload = notifications.Ping(kind="ping", token=token).model_dump_json()
            await listener.notify(self.channel, payload, timeout)
            await asyncio.wait_for(echo, max(0.0, deadline - loop.time()))
            return True
        except (TimeoutError, AgentMessagingError):
            return False
        finally:
            self._pongs.pop(token, None)

    async def backend_pid(self) -> int | None:
        """The server process id of the listener connection (for diagnostics)."""
        listener = self._listener
        if listener is None:
            return None
        return await listener.backend_pid(10.0)

    async def listening_channels(self) -> list[str] | None:
        """The channels the listener connection LISTENs on (for diagnostics; when the
        host's listener is shared, those of every process of the host), or ``None``
        while not listening."""
        listener = self._listener
        if listener is None:
            return None
        return await listener.listening_channels(10.0)

    # -- the loop ----------------------------------------------------------

    async def _connect(self) -> AnyListener:
        """Open a listener connection and LISTEN every channel on it."""
        async with self._lock:
            return await self._open_listener()

    async def _open_listener(self) -> AnyListener:
        """:meth:`_connect` with the lock held."""
        listener: AnyListener
        if self._share_dir is not None:
            from .hub import SharedListener, ShareState

            if self._share is None:
                self._share = ShareState()
            listener = SharedListener(self._db, self._share_dir, self._share, self._check_interval)
        else:
            listener = self._db.listener()
        await listener.start()
        try:
            await listener.listen([self.channel, *self._listening], self._db.statement_timeout)
            self._listener = listener
        except BaseException:
            await listener.close()
            raise
        self._connected.set()
        return listener

    async def _run(self, listener: AnyListener | None) -> None:
        delay = 0.05
        while not self._closing:
            try:
                if listener is None:
                    listener = await self._connect()
                    self.reconnects += 1
                    log.info("listener reconnected; catching up from the tables")
                    await self._run_catch_ups()
                    # present again only now: the catch-ups handed back what was
                    # handed to a worker over the lost connection
                    await self._hold_all(listener)
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
                    await listener.close()
                listener = None
            if not self._closing:
                await asyncio.sleep(delay)
                # a down server refuses at once: trying twice a second costs nothing
                # and has the listener back within half a second of its return
                delay = min(delay * 2, 0.5)

    async def _serve(self, listener: AnyListener) -> None:
        """Read notifications until the connection is found dead."""
        reader = asyncio.create_task(self._read(listener))
        checker = asyncio.create_task(self._check())
        try:
            done, _ = await asyncio.wait({reader, checker}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is not None:
                    # a hub whose process left is handed over as a matter of course;
                    # a connection the server lost is worth a warning
                    level = logging.WARNING if listener.ends_with_server else logging.INFO
                    log.log(level, "listener lost: %s", task.exception())
            if reader in done and listener.ends_with_server:
                # the server closed the listener's connection (a restart, a crash):
                # the pool's idle connections went with it
                self._db.invalidate()
        finally:
            for task in (reader, checker):
                await tasks.stop(task)

    async def _read(self, listener: AnyListener) -> None:
        async for channel, payload in listener.notifications():
            self._route(channel, payload)

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
        for callback in self._subs.get(channel, ()):
            try:
                callback(channel, notification)
            except Exception:
                log.exception("notification callback failed")
