"""The connector: the only module that talks to the driver (psqlpy).

Every query binds its parameters. Every call of an ``amp.*`` function is one
statement and therefore one transaction (the connections autocommit).

The pool is the SDK's own, over single psqlpy connections, so that every call

* returns its connection deterministically (whatever becomes of the error raised),
* waits at most ``pool_timeout`` for a free connection and ``connect_timeout`` for a
  new one (:class:`DatabaseUnavailableError`, naming host:port),
* has a deadline (``statement_timeout`` unless the caller's is sooner): the server
  enforces the same ``statement_timeout`` and ``lock_timeout``, and when the client's
  deadline passes first, or the calling task is cancelled, the statement is
  cancelled on the server (``pg_cancel_backend`` of the connection's backend, sent
  over a separate control connection), so nothing runs on after the caller gave up,
* raises only :class:`AgentMessagingError` subclasses: ``amp`` errors by the code in
  their last ``HINT`` line, a broken connection as :class:`ConnectionLostError`
  (``outcome_unknown`` when the statement may have committed), a cancelled statement
  as :class:`StatementTimeoutError`, anything else as :class:`DatabaseError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import re
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import psqlpy

from . import queries
from .config import Config
from .exceptions import (
    AgentMessagingError,
    ConnectionLostError,
    DatabaseError,
    DatabaseUnavailableError,
    StatementTimeoutError,
    TransactionError,
    amp_error,
)

Row = dict[str, Any]


class Statements(Protocol):
    """Where the messaging patterns run their statements: the pool
    (:class:`Database`, one transaction per call) or a :class:`DbTransaction`."""

    async def fetch(
        self,
        query: str,
        params: Sequence[Any] | None = None,
        *,
        timeout: float | None = None,
        read_only: bool = False,
    ) -> list[Row]: ...

    async def fetch_value(
        self,
        query: str,
        params: Sequence[Any] | None = None,
        *,
        timeout: float | None = None,
        read_only: bool = False,
    ) -> Any: ...


log = logging.getLogger("agent_messaging.database")

_SETTLE_SECONDS = 0.05
#: after a deadline, how long to wait for the cancelled statement to end
CANCEL_GRACE = 0.25
#: how long a background clean-up of a cancelled call may wait for the server
_ABANDON_PATIENCE = 30.0
#: a pool at its minimum size lets a call wait this long for a busy connection
#: before it opens another: an idle process's background calls (heartbeat, sweep)
#: that happen to coincide then share one connection instead of opening a second
GROW_AFTER = 0.02

# Errors that mean the connection itself is gone (the server restarted, crashed, was
# terminated, or the network broke), as the driver words them.
_LOST_RE = re.compile(
    r"connection closed|error communicating with the server|terminating connection|"
    r"server closed the connection|unexpected EOF|broken pipe|connection reset|"
    r"shutting down|the database system is|FATAL:",
    re.IGNORECASE,
)
_CANCELLED_RE = re.compile(r"canceling statement due to (statement timeout|lock timeout|user)")
_TOO_MANY_RE = re.compile(
    r"too many clients|too many connections|remaining connection slots are reserved"
)


def describe_server(dsn: str) -> str:
    """``host:port/database`` of a libpq URL, for error messages (never the password)."""
    try:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        host = parts.hostname or (query.get("host") or ["localhost"])[0]
        port = parts.port or int((query.get("port") or ["5432"])[0])
        database = parts.path.lstrip("/") or (query.get("dbname") or [""])[0]
    except ValueError:
        return "the configured server"
    where = f"{host}:{port}"
    return f"{where}/{database}" if database else where


def dsn_application_name(dsn: str) -> str | None:
    """The ``application_name`` a libpq URL sets, if any."""
    try:
        found = parse_qs(urlsplit(dsn).query).get("application_name")
    except ValueError:
        return None
    return found[0] if found else None


def _seconds(value: float) -> str:
    return f"{value:.3g} s"


@dataclass(eq=False)
class _Slot:
    """One open connection of the pool and its server process id."""

    conn: Any  # psqlpy.Connection
    pid: int
    #: the pool's epoch when it was opened: older ones are dropped on checkout
    epoch: int = 0
    broken: bool = False
    #: dropped when returned (a transaction left in an unknown state), without
    #: taking the pool's other connections for dead
    discard: bool = False
    #: a transaction's statement was abandoned: a background clean-up owns it now
    abandoned: bool = False
    #: the loop's time when it was last returned to the pool
    idle_since: float = 0.0


@dataclass
class _Stats:
    """Counters, for tests and diagnostics."""

    opened: int = 0
    closed: int = 0
    cancels: int = 0
    abandoned: int = 0
    waits: list[float] = field(default_factory=list)


class _OneRow:
    """``fetch_one`` and ``fetch_value`` for any class with ``fetch``: the pool and a
    transaction alike."""

    async def fetch(
        self,
        query: str,
        params: Sequence[Any] | None = None,
        *,
        timeout: float | None = None,
        read_only: bool = False,
    ) -> list[Row]:
        raise NotImplementedError

    async def fetch_one(
        self,
        query: str,
        params: Sequence[Any] | None = None,
        *,
        timeout: float | None = None,
        read_only: bool = False,
    ) -> Row:
        """Like :meth:`fetch` for a statement that yields exactly one row."""
        rows = await self.fetch(query, params, timeout=timeout, read_only=read_only)
        if len(rows) != 1:
            raise DatabaseError(f"expected one row, got {len(rows)}")
        return rows[0]

    async def fetch_value(
        self,
        query: str,
        params: Sequence[Any] | None = None,
        *,
        timeout: float | None = None,
        read_only: bool = False,
    ) -> Any:
        """The single column of the single row a statement yields."""
        row = await self.fetch_one(query, params, timeout=timeout, read_only=read_only)
        return next(iter(row.values()))


class Database(_OneRow):
    """A pool of connections plus the helpers every module uses to call ``amp.*``."""

    def __init__(
        self,
        dsn: str,
        *,
        max_pool_size: int = 10,
        connect_timeout: float = 10.0,
        statement_timeout: float = 30.0,
        lock_timeout: float = 10.0,
        pool_timeout: float = 10.0,
        min_pool_size: int = 1,
        idle_timeout: float = 30.0,
        application_name: str | None = None,
        listen_dsn: str | None = None,
    ) -> None:
        self.dsn = dsn
        #: where LISTEN connections go: the main URL unless ``listen_url`` names
        #: another (a direct server URL while the pool goes through PgBouncer in
        #: transaction mode, which cannot keep a LISTEN)
        self.listen_dsn = listen_dsn or dsn
        #: ``host:port/database``, for messages
        self.server = describe_server(dsn)
        self.max_pool_size = max_pool_size
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        self.pool_timeout = pool_timeout
        #: connections kept open while idle (more are opened under load, and closed
        #: again after ``idle_timeout`` seconds unused)
        self.min_pool_size = min_pool_size
        self.idle_timeout = idle_timeout
        #: the pool's connections are named so (the listener ``<name>-listener``, the
        #: control connection ``<name>-control``), for ``pg_stat_activity``; by default
        #: the URL's ``application_name``, else ``amp``
        self.application_name = application_name or dsn_application_name(dsn) or "amp"
        self._idle: list[_Slot] = []  # the most recently used last
        self._size = 0  # connections open or being opened
        self._opening = 0  # of which being opened
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._epoch = 0
        self._control: _Slot | None = None
        self._control_lock = asyncio.Lock()
        self._control_used = 0.0
        self._reaper: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.stats = _Stats()

    @classmethod
    def connect(cls, dsn: str, max_pool_size: int = 10, config: Config | None = None) -> Database:
        """Create the pool (connections are opened lazily), with the timeouts of
        ``config`` (defaults: :class:`Config`'s)."""
        config = config or Config.model_construct()
        return cls(
            dsn,
            max_pool_size=max_pool_size,
            connect_timeout=config.connect_timeout,
            statement_timeout=config.statement_timeout,
            lock_timeout=config.lock_timeout,
            pool_timeout=config.pool_timeout,
            min_pool_size=config.min_pool_size,
            idle_timeout=config.pool_idle_timeout,
            application_name=config.application_name,
            listen_dsn=config.listen_url,
        )

    # -- the pool ------------------------------------------------------------

    @property
    def in_use(self) -> int:
        """Connections checked out right now (for tests and diagnostics)."""
        return self._size - len(self._idle)

    @property
    def size(self) -> int:
        """Connections open (or being opened) right now."""
        return self._size

    async def _open(self, timeout: float, role: str = "") -> _Slot:
        """A new connection, its backend pid known and its timeouts set; ``role``
        suffixes its application_name (``-control``)."""
        started = asyncio.get_running_loop().time()
        timeout = max(0.001, min(timeout, self.connect_timeout))
        try:
            conn = await asyncio.wait_for(
                psqlpy.connect(
                    dsn=self.dsn,
                    connect_timeout_sec=max(1, math.ceil(timeout)),
                    application_name=self.application_name + role,
                ),
                timeout,
            )
            rows = (
                await asyncio.wait_for(
                    conn.execute(
                        "SELECT pg_backend_pid() AS pid, "
                        "set_config('statement_timeout', $1, false) AS s, "
                        "set_config('lock_timeout', $2, false) AS l",
                        [
                            f"{max(1, round(self.statement_timeout * 1000))}ms",
                            f"{max(1, round(self.lock_timeout * 1000))}ms",
                        ],
                    ),
                    max(0.001, timeout - (asyncio.get_running_loop().time() - started)),
                )
            ).result()
        except TimeoutError:
            raise DatabaseUnavailableError(
                f"cannot connect to the server at {self.server}: no answer within "
                f"{_seconds(timeout)} (connect_timeout)"
            ) from None
        except psqlpy.Error as exc:
            raise self._connect_error(exc, started) from None
        self.stats.opened += 1
        return _Slot(conn, int(rows[0]["pid"]), self._epoch)

    def _connect_error(self, exc: Exception, started: float) -> AgentMessagingError:
        text = str(exc)
        after = _seconds(asyncio.get_running_loop().time() - started)
        reason = text.split("error - ", 1)[-1].split("object: ", 1)[-1]
        if _TOO_MANY_RE.search(text):
            return DatabaseUnavailableError(
                f"the server at {self.server} refused the connection: "
                f"{_TOO_MANY_RE.search(text).group(0)} (max_connections, or the role's or "  # type: ignore[union-attr]
                f"database's CONNECTION LIMIT, is reached; each SDK process needs up to "
                f"max_pool_size + 2 = {self.max_pool_size + 2} connections under load, "
                f"2 when idle)"
            )
        return DatabaseUnavailableError(
            f"cannot connect to the server at {self.server} (after {after}): {reason}"
        )

    def _drop(self, slot: _Slot) -> None:
        """Forget a connection; the driver closes it when its object goes."""
        self._size -= 1
        self.stats.closed += 1
        with contextlib.suppress(Exception):
            slot.conn.close()
        slot.conn = None
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _acquire(self, deadline: float) -> _Slot:
        loop = asyncio.get_running_loop()
        pool_deadline = min(deadline, loop.time() + self.pool_timeout)
        patient = self._size > 0 and self._size <= max(1, self.min_pool_size)
        while True:
            if self._closed:
                raise DatabaseUnavailableError("the SDK is closed")
            while self._idle:
                slot = self._idle.pop()
                if slot.epoch != self._epoch:
                    self._drop(slot)  # opened before the server went away
                    continue
                return slot
            if self._size < self.max_pool_size and not patient:
                self._size += 1
                self._opening += 1
                try:
                    return await self._open(deadline - loop.time())
                except BaseException:
                    self._size -= 1
                    self._wake_one()
                    raise
                finally:
                    self._opening -= 1
                    self._wake_one()  # whoever waited for it to open looks again
            remaining = pool_deadline - loop.time()
            if patient:
                # at the minimum size: wait a moment for the busy one before growing;
                # while it is still being opened (a process starting, whose first
                # calls come at once), wait until it is open, then that moment more:
                # it is free as soon as its first statement is done
                if self._opening > 0:
                    remaining = min(remaining, self.connect_timeout)
                else:
                    remaining = min(remaining, GROW_AFTER)
                    patient = False
            elif remaining <= 0:
                raise DatabaseUnavailableError(
                    f"no free connection to {self.server} within "
                    f"{_seconds(min(self.pool_timeout, max(0.0, deadline - loop.time())))}: "
                    f"all {self.max_pool_size} connections of the pool are busy (max_pool_size)"
                )
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken but leaving: pass the free slot on
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def invalidate(self) -> None:
        """The server went away (a connection broke, the listener lost its own):
        connections opened before now are not used again. psqlpy cannot tell a
        closed connection from an open one without using it, so this is how a
        restart of the server costs no call an error."""
        self._epoch += 1
        while self._idle:
            self._drop(self._idle.pop())

    def _release(self, slot: _Slot) -> None:
        if slot.broken and slot.epoch == self._epoch:
            self.invalidate()  # its siblings are most likely dead too
        if (
            slot.broken
            or slot.discard
            or self._closed
            or slot.conn is None
            or slot.epoch != self._epoch
        ):
            self._drop(slot)
            return
        slot.idle_since = asyncio.get_running_loop().time()
        self._idle.append(slot)
        self._wake_one()
        self._schedule_reap()

    def _schedule_reap(self) -> None:
        """Arm the timer that closes idle connections beyond ``min_pool_size`` (and
        the control connection) once they have been unused for ``idle_timeout``."""
        if self._reaper is not None or self._closed:
            return
        due: list[float] = []
        if self._idle and self._size > self.min_pool_size:
            due.append(self._idle[0].idle_since + self.idle_timeout)
        if self._control is not None:
            due.append(self._control_used + self.idle_timeout)
        if due:
            loop = asyncio.get_running_loop()
            self._reaper = loop.call_at(min(due), self._reap)

    def _reap(self) -> None:
        self._reaper = None
        if self._closed:
            return
        now = asyncio.get_running_loop().time()
        # the least recently used first; ``connection()``s and statements in flight
        # hold theirs checked out, so only connections nobody uses are closed
        while (
            self._idle
            and self._size > self.min_pool_size
            and now - self._idle[0].idle_since >= self.idle_timeout - 1e-3
        ):
            self._drop(self._idle.pop(0))
        control = self._control
        if (
            control is not None
            and not self._control_lock.locked()
            and now - self._control_used >= self.idle_timeout - 1e-3
        ):
            self._control = None
            with contextlib.suppress(Exception):
                control.conn.close()
        self._schedule_reap()

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """A connection of the pool for a few statements of the caller's own
        (returned when the block ends, whatever happens in it)."""
        loop = asyncio.get_running_loop()
        slot = await self._acquire(loop.time() + (timeout or self.statement_timeout))
        try:
            yield slot.conn
        except psqlpy.Error as exc:
            raise self._statement_error(exc, slot, write=True) from None
        finally:
            self._release(slot)

    # -- statements ------------------------------------------------------------

    def _statement_error(self, exc: Exception, slot: _Slot, *, write: bool) -> AgentMessagingError:
        text = str(exc)
        found = amp_error(text)
        if found is not None:
            return found
        if _CANCELLED_RE.search(text):
            return StatementTimeoutError(
                f"the server cancelled the statement ({text.split('ERROR: ', 1)[-1]}; "
                f"statement_timeout {_seconds(self.statement_timeout)}, lock_timeout "
                f"{_seconds(self.lock_timeout)}): nothing was changed"
            )
        if _LOST_RE.search(text):
            slot.broken = True
            return self._lost(text.split("error - ", 1)[-1], write=write)
        return DatabaseError(text.split("error - db error: ", 1)[-1])

    def _lost(self, reason: str, *, write: bool) -> ConnectionLostError:
        if write:
            return ConnectionLostError(
                f"the connection to {self.server} was lost during the call ({reason}); "
                "the outcome is unknown: the statement may have committed. Retry a send "
                "with the same idempotency_key to get the original message, not a second one",
                outcome_unknown=True,
            )
        return ConnectionLostError(
            f"the connection to {self.server} was lost during the call ({reason})"
        )

    async def _run(
        self,
        query: str,
        params: Sequence[Any] | None,
        timeout: float | None,
        write: bool,
        rows: bool = True,
    ) -> list[Row]:
        loop = asyncio.get_running_loop()
        limit = self.statement_timeout if timeout is None else min(timeout, self.statement_timeout)
        deadline = loop.time() + max(0.0, limit)
        attempts = 1 if write else 2
        for attempt in range(attempts):
            slot = await self._acquire(deadline)
            try:
                return await self._execute(slot, query, params, deadline, limit, write, rows)
            except ConnectionLostError:
                # a read is safe to repeat on a fresh connection (the pool's idle
                # connections of a restarted server are dropped on checkout)
                if attempt + 1 >= attempts or loop.time() >= deadline:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _execute(
        self,
        slot: _Slot,
        query: str,
        params: Sequence[Any] | None,
        deadline: float,
        limit: float,
        write: bool,
        rows: bool,
        release: bool = True,
    ) -> list[Row]:
        """Run one statement on ``slot`` within ``deadline``; return the connection to
        the pool afterwards if ``release`` (else the caller keeps it: a transaction).

        Whenever the statement is abandoned (the deadline, a cancellation) the
        connection goes to a background clean-up; a kept one is then marked
        ``discard`` (it will be closed, which rolls its transaction back).
        """
        loop = asyncio.get_running_loop()

        def give_up(running: asyncio.Future[Any]) -> None:
            if not release:
                slot.discard = slot.abandoned = True
            self._abandon(slot, running)

        try:
            running = asyncio.ensure_future(
                slot.conn.execute(query, list(params) if params is not None else None)
            )
        except BaseException:
            if release:
                self._release(slot)
            raise
        try:
            await asyncio.wait({running}, timeout=max(0.0, deadline - loop.time()))
        except asyncio.CancelledError:
            # the caller gave up: the statement must not run on after it
            give_up(running)
            raise
        if not running.done():
            # the deadline passed: cancel the statement on the server and give it a
            # moment to end (it may also have just finished)
            cancel = asyncio.ensure_future(self._cancel_backend(slot.pid, CANCEL_GRACE))
            self._background.add(cancel)
            cancel.add_done_callback(self._background.discard)
            # a cancel can reach the backend after its statement ended and then cancel
            # the next one: never reuse a connection a cancel was sent to
            slot.discard = True
            try:
                await asyncio.wait({running}, timeout=CANCEL_GRACE)
            except asyncio.CancelledError:
                give_up(running)
                raise
            if not running.done():
                give_up(running)
                message = f"the server at {self.server} did not answer within {_seconds(limit)}"
                if write:
                    raise ConnectionLostError(
                        message + "; the outcome is unknown: the statement may have committed."
                        " Retry a send with the same idempotency_key",
                        outcome_unknown=True,
                    )
                raise ConnectionLostError(message)
        try:
            exc = running.exception()
            if exc is not None:
                if isinstance(exc, psqlpy.Error):
                    raise self._statement_error(exc, slot, write=write) from None
                slot.broken = True
                raise exc
            if not rows:
                return []
            try:
                found: list[Row] = running.result().result()
            except psqlpy.Error as exc:
                raise DatabaseError(f"cannot decode the result: {exc}") from None
            return found
        finally:
            if release:
                self._release(slot)

    def _abandon(self, slot: _Slot, running: asyncio.Future[Any]) -> None:
        """The caller left while its statement runs: cancel it on the server, and
        return (or drop) the connection once the statement has ended."""
        self.stats.abandoned += 1

        async def settle() -> None:
            try:
                if not running.done():
                    slot.discard = True  # the cancel may land late: never reuse it
                    with contextlib.suppress(Exception):
                        await self._cancel_backend(slot.pid, 5.0)
                    await asyncio.wait({running}, timeout=_ABANDON_PATIENCE)
            finally:
                if running.done():
                    exc = None if running.cancelled() else running.exception()
                    if exc is not None and _LOST_RE.search(str(exc)):
                        slot.broken = True
                else:
                    slot.broken = True
                self._release(slot)

        task = asyncio.get_running_loop().create_task(settle(), name="amp-cancel-statement")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cancel_backend(self, pid: int, timeout: float) -> None:
        """``pg_cancel_backend(pid)`` over the control connection (opened on first use,
        outside the pool so that a busy pool cannot delay a cancel)."""
        self.stats.cancels += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                async with self._control_lock:
                    if self._control is None:
                        self._control = await self._open(deadline - loop.time(), "-control")
                    control = self._control
                    try:
                        await control.conn.execute("SELECT pg_cancel_backend($1)", [pid])
                    except psqlpy.Error:
                        self._control = None
                        raise
                    finally:
                        # closed again once unused for idle_timeout
                        self._control_used = loop.time()
                        self._schedule_reap()
        except (TimeoutError, AgentMessagingError, psqlpy.Error) as exc:
            log.warning("could not cancel the statement of backend %s: %s", pid, exc)
            self._control = None

    async def execute(
        self, query: str, params: Sequence[Any] | None = None, *, timeout: float | None = None
    ) -> None:
        """Run one statement with bound parameters, ignoring its result (``void``).

        ``timeout``: the call's deadline in seconds, if sooner than
        ``statement_timeout``.
        """
        await self._run(query, params, timeout, write=True, rows=False)

    async def fetch(
        self,
        query: str,
        params: Sequence[Any] | None = None,
        *,
        timeout: float | None = None,
        read_only: bool = False,
    ) -> list[Row]:
        """Run one statement with bound parameters; return its rows as dicts.

        ``read_only``: the statement changes nothing, so a lost connection is retried
        once on a fresh one and never has an unknown outcome.
        """
        return await self._run(query, params, timeout, write=not read_only)

    # -- transactions ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self, timeout: float | None = None) -> AsyncIterator[DbTransaction]:
        """``BEGIN`` on one connection of the pool, held for the block: ``COMMIT``
        when the block ends, ``ROLLBACK`` when it raises. ``timeout``: how long to
        wait for the connection (default ``statement_timeout``); each statement has
        its own deadline, as every call does."""
        loop = asyncio.get_running_loop()
        slot = await self._acquire(loop.time() + (timeout or self.statement_timeout))
        tx = DbTransaction(self, slot)
        try:
            await tx.execute("BEGIN")
        except BaseException:
            tx._close()
            raise
        try:
            yield tx
        except BaseException:
            await tx._rollback()
            raise
        else:
            await tx._commit()
        finally:
            tx._close()

    # -- listening -------------------------------------------------------------

    def listener(self) -> Listener:
        """A new LISTEN connection (not from the pool); start it with ``start()``."""
        return Listener(self)

    # -- closing ---------------------------------------------------------------

    async def close(self) -> None:
        """Close every connection; calls made afterwards raise."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=2.0)
        while self._idle:
            self._drop(self._idle.pop())
        if self._control is not None:
            with contextlib.suppress(Exception):
                self._control.conn.close()
            self._control = None
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        gc.collect()  # drop unreachable psqlpy objects now, not during finalization
        # psqlpy drops its connections on its own (tokio) threads, which take the
        # GIL to do so; if the interpreter finalizes meanwhile the process aborts
        # ("PyGILState_Release: thread state must be current"), in about one exit
        # in five here. A moment for them to finish makes that go away.
        await asyncio.sleep(_SETTLE_SECONDS)


class DbTransaction(_OneRow):
    """One open transaction on one pool connection (:meth:`Database.transaction`).

    Its statements bind their parameters and have deadlines like every call of the
    pool. A statement that fails aborts the transaction (as PostgreSQL does): later
    statements raise :class:`TransactionError`, and the block's end rolls back and
    raises it too, even if the error was caught inside the block.
    """

    def __init__(self, db: Database, slot: _Slot) -> None:
        self._db = db
        self._slot: _Slot | None = slot
        self._failed: BaseException | None = None
        self._over = False

    async def _run(
        self, query: str, params: Sequence[Any] | None, timeout: float | None, rows: bool
    ) -> list[Row]:
        if self._over or self._slot is None:
            raise TransactionError("the transaction is over: use it inside its 'async with'")
        if self._failed is not None:
            raise TransactionError(
                f"the transaction is aborted: a statement in it failed ({self._failed!r}); "
                "it is rolled back when its block ends"
            )
        db = self._db
        loop = asyncio.get_running_loop()
        limit = db.statement_timeout if timeout is None else min(timeout, db.statement_timeout)
        slot = self._slot
        try:
            return await db._execute(
                slot, query, params, loop.time() + max(0.0, limit), limit, True, rows, False
            )
        except BaseException as exc:
            self._failed = exc
            if slot.abandoned:
                self._slot = None  # a background clean-up closes it (rolling back)
            if isinstance(exc, ConnectionLostError):
                raise ConnectionLostError(
                    f"the connection to {db.server} was lost during the transaction: "
                    "it was rolled back, nothing of it was committed"
                ) from None
            raise

    async def execute(
        self, query: str, params: Sequence[Any] | None = None, *, timeout: float | None = None
    ) -> None:
        """Run one statement with bound parameters in the transaction."""
        await self._run(query, params, timeout, rows=False)

    async def fetch(
        self,
        query: str,
        params: Sequence[Any] | None = None,
        *,
        timeout: float | None = None,
        read_only: bool = False,
    ) -> list[Row]:
        """Run one statement with bound parameters in the transaction; its rows as
        dicts (``read_only`` is accepted for symmetry with :meth:`Database.fetch`)."""
        return await self._run(query, params, timeout, rows=True)

    async def _commit(self) -> None:
        if self._failed is not None:
            failed = self._failed
            await self._rollback()
            raise TransactionError(
                f"the transaction was rolled back, not committed: a statement in it "
                f"failed ({failed!r})"
            )
        slot, self._over = self._slot, True
        if slot is None:
            raise TransactionError("the transaction was rolled back, not committed")
        db = self._db
        loop = asyncio.get_running_loop()
        limit = db.statement_timeout
        try:
            await db._execute(slot, "COMMIT", None, loop.time() + limit, limit, True, False, False)
        except BaseException:
            if slot.abandoned:
                self._slot = None
            raise

    async def _rollback(self) -> None:
        slot, self._over = self._slot, True
        if slot is None or slot.broken:
            return  # gone with its connection: the server rolled it back
        db = self._db
        loop = asyncio.get_running_loop()
        limit = db.statement_timeout
        try:
            await db._execute(
                slot, "ROLLBACK", None, loop.time() + limit, limit, True, False, False
            )
        except Exception:
            # closing the connection rolls the transaction back; the block's own
            # exception is the one to report
            slot.discard = True
        finally:
            if slot.abandoned:
                self._slot = None

    def _close(self) -> None:
        """Return the connection to the pool (closed if its state is unknown)."""
        self._over = True
        slot, self._slot = self._slot, None
        if slot is not None:
            self._db._release(slot)


class Listener:
    """One LISTEN connection: notifications in, a few statements of its own out.

    Errors are :class:`AgentMessagingError` subclasses, like every call of the pool.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._listener: Any = None  # psqlpy.Listener

    async def start(self) -> None:
        """Open the connection (bounded by ``connect_timeout``)."""
        db = self._db
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            pool = psqlpy.ConnectionPool(
                dsn=db.listen_dsn,
                max_db_pool_size=2,
                connect_timeout_sec=max(1, math.ceil(db.connect_timeout)),
                application_name=db.application_name + "-listener",
            )
            self._listener = pool.listener()
            await asyncio.wait_for(self._listener.startup(), db.connect_timeout)
        except TimeoutError:
            await self.close()
            raise DatabaseUnavailableError(
                f"cannot connect to the server at {db.server}: no answer within "
                f"{_seconds(db.connect_timeout)} (connect_timeout)"
            ) from None
        except psqlpy.Error as exc:
            await self.close()
            raise db._connect_error(exc, started) from None

    async def execute(
        self, query: str, params: Sequence[Any] | None, timeout: float, rows: bool = False
    ) -> list[Row]:
        """Run a statement on the listener's own connection, within ``timeout``;
        its rows if ``rows``."""
        if self._listener is None:
            raise ConnectionLostError("the listener is closed")
        try:
            result = await asyncio.wait_for(
                self._listener.connection.execute(
                    query, list(params) if params is not None else None
                ),
                timeout,
            )
        except TimeoutError:
            raise ConnectionLostError(
                f"the listener connection to {self._db.server} did not answer within "
                f"{_seconds(timeout)}"
            ) from None
        except psqlpy.Error as exc:
            found = amp_error(str(exc))
            if found is not None:
                raise found from None
            raise ConnectionLostError(f"the listener connection failed: {exc}") from None
        if not rows:
            return []
        decoded: list[Row] = result.result()
        return decoded

    #: the end of :meth:`notifications` means the server closed the connection
    #: (so the pool's idle connections are most likely dead too)
    ends_with_server = True

    async def listen(self, channels: list[str], timeout: float) -> None:
        """LISTEN on ``channels`` (``amp.listen``)."""
        await self.execute(queries.LISTEN, [channels], timeout)

    async def unlisten(self, channels: list[str], timeout: float) -> None:
        """UNLISTEN ``channels`` (``amp.unlisten``)."""
        await self.execute(queries.UNLISTEN, [channels], timeout)

    async def notify(self, channel: str, payload: str, timeout: float) -> None:
        """NOTIFY over the listener's own connection (the health check's echo)."""
        await self.execute(queries.NOTIFY, [channel, payload], timeout)

    async def hold(self, worker: Any, lease: float, timeout: float) -> bool:
        """``amp.hold_worker`` on this connection: the worker is present while it
        lasts (direct delivery); false if another connection holds it."""
        rows = await self.execute(queries.HOLD_WORKER, [worker, lease], timeout, rows=True)
        return bool(rows and rows[0]["held"])

    async def release(self, worker: Any, timeout: float) -> None:
        """``amp.release_worker`` on this connection: :meth:`hold` undone."""
        await self.execute(queries.RELEASE_WORKER, [worker], timeout)

    async def backend_pid(self, timeout: float) -> int:
        """The server process id of the LISTEN connection."""
        rows = await self.execute(queries.LISTENER_BACKEND_PID, None, timeout, rows=True)
        return int(rows[0]["pid"])

    async def listening_channels(self, timeout: float) -> list[str]:
        """The channels the LISTEN connection LISTENs on, sorted."""
        rows = await self.execute(queries.LISTENING_CHANNELS, None, timeout, rows=True)
        return [str(row["channel"]) for row in rows]

    async def notifications(self) -> AsyncIterator[tuple[str, str]]:
        """``(channel, payload)`` of every notification, until the connection fails
        (then :class:`ConnectionLostError`)."""
        try:
            async for message in self._listener:
                yield message.channel, message.payload
        except psqlpy.Error as exc:
            raise ConnectionLostError(f"the listener connection failed: {exc}") from None
        raise ConnectionLostError("the listener connection ended")

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.shutdown(), 2.0)


async def resolve_dsn(config: Config) -> str:
    """The server to use: the configured one, else the embedded one (started here)."""
    dsn = config.explicit_dsn()
    if dsn is not None:
        return dsn
    from . import embedded

    admin_dsn = await asyncio.to_thread(embedded.server_dsn, config.embedded_data_dir)
    await create_database_if_missing(admin_dsn, config.embedded_database)
    return await asyncio.to_thread(
        embedded.server_dsn, config.embedded_data_dir, config.embedded_database
    )


async def create_database_if_missing(admin_dsn: str, name: str) -> None:
    """CREATE DATABASE ``name`` unless it exists; safe when processes race."""
    db = Database(admin_dsn, max_pool_size=2)
    try:
        rows = await db.fetch(queries.DATABASE_EXISTS, [name])
        if not rows:
            # CREATE DATABASE takes an identifier; format('%I') quotes it server-side.
            stmt = await db.fetch_value(queries.CREATE_DATABASE, [name])
            try:
                await db.execute(stmt)
            except DatabaseError as exc:
                if "already exists" not in str(exc):
                    raise
    finally:
        await db.close()
