"""One LISTEN connection per host: SDK processes on one machine share it.

PostgreSQL up to 18 signals every listening backend of a database on each notifying
commit, so every listening process taxes every send. With ``share_listener`` on (the
default), the processes of one user on one machine that use the same server and
database share one LISTEN connection:

* the first process that needs a listener takes an exclusive ``flock`` on
  ``listener-<hash>.lock`` in a private runtime directory (mode 0700: only the same
  user's processes can subscribe) and starts the host's *hub*: a thread of its own,
  with its own event loop, that opens the LISTEN connection and serves a Unix socket
  ``listener-<hash>.sock`` beside the lock;
* every process, the hub's own included, connects to that socket and subscribes to
  its channels; the hub LISTENs the union of everyone's channels and forwards each
  notification to the processes subscribed to its channel. Their health checks are
  NOTIFY round trips through the hub, so they prove the whole path;
* the hub does nothing on its process's event loop: a process whose loop is busy
  (CPU-bound handler code) still forwards the others' notifications at once. What
  can still hold it is code that keeps the GIL without releasing it for long (a C
  extension that never releases it); pure Python code gives it up every few
  milliseconds (``sys.getswitchinterval()``);
* the hub checks its own connection (a NOTIFY round trip every
  ``listener_check_interval``) and stops when it fails, as when its process closes
  or is killed: the kernel releases its lock and closes its socket, the others see
  EOF, one of them takes the lock and starts the new hub, the rest subscribe to it.
  Each then catches up from the tables, as after any lost listener (listen, check,
  wait, re-check);
* a process that cannot share (no usable runtime directory, a hub that does not
  answer) falls back to a LISTEN connection of its own.

``<hash>`` is a digest of the LISTEN connection's URL less its ``application_name``
(so of host, port, database and role). The wire format is one JSON object per line:
requests ``{"id", "op", ...}`` with replies ``{"id", ...}``, and notifications
``{"c": channel, "p": payload}``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from . import tasks
from .database import Database, Listener
from .exceptions import AgentMessagingError, ConnectionLostError

log = logging.getLogger("agent_messaging.hub")

#: a subscriber whose socket buffers this much unread data is dropped (it then
#: reconnects and catches up from the tables); also the longest request line (a
#: LISTEN of every channel of a process serving many agents)
_MAX_BACKLOG = 16 * 1024 * 1024


#: the interpreter's switch interval while this process runs a hub: a thread waiting
#: for the GIL (the hub's, or the driver's delivering a notification to it) gets it
#: within this long from a thread that runs pure Python code (the default, 5 ms,
#: made a CPU-bound handler delay each hop by 30 ms at the median, measured)
HUB_SWITCH_INTERVAL = 0.001
_switch_lock = threading.Lock()
_hubs_running = 0
_switch_saved: float | None = None


def _hub_started() -> None:
    """Lower the switch interval while a hub runs, unless someone changed it."""
    global _hubs_running, _switch_saved
    with _switch_lock:
        _hubs_running += 1
        if _hubs_running == 1 and sys.getswitchinterval() > HUB_SWITCH_INTERVAL:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(HUB_SWITCH_INTERVAL)


def _hub_stopped() -> None:
    """Restore the switch interval once the last hub of the process stopped."""
    global _hubs_running, _switch_saved
    with _switch_lock:
        _hubs_running -= 1
        if _hubs_running == 0 and _switch_saved is not None:
            if sys.getswitchinterval() == HUB_SWITCH_INTERVAL:
                sys.setswitchinterval(_switch_saved)
            _switch_saved = None


#: the hubs running in this process (a child forked meanwhile closes its copies of their
#: lock and sockets: the lock would otherwise outlive the hub, held by the child)
_running_hubs: set[_Hub] = set()


def _after_fork_in_child() -> None:
    """In a child forked from a process that runs a hub: no hub runs here (its thread
    did not come along), so let go of the hub's lock and sockets and restore the
    switch interval."""
    global _hubs_running, _switch_saved
    for hub in list(_running_hubs):
        hub.forget_in_child()
    _running_hubs.clear()
    _hubs_running = 0
    if _switch_saved is not None:
        sys.setswitchinterval(_switch_saved)
        _switch_saved = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def share_key(listen_dsn: str) -> str:
    """The name of a host's hub for one LISTEN URL: a digest of the URL less its
    ``application_name`` (processes that name themselves differently share too)."""
    parts = urlsplit(listen_dsn)
    if parts.scheme in ("postgres", "postgresql") and parts.query:
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "application_name"]
        listen_dsn = urlunsplit(parts._replace(query=urlencode(query)))
    return hashlib.sha256(listen_dsn.encode()).hexdigest()[:24]


def default_socket_dir() -> Path:
    """``$XDG_RUNTIME_DIR/agent-messaging``, else ``<tmp>/agent-messaging-<uid>``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "agent-messaging"
    return Path(tempfile.gettempdir()) / f"agent-messaging-{os.getuid()}"


@dataclass
class ShareState:
    """What one dispatcher remembers across its listeners: a hub that stopped
    answering (not one that exited) makes it use a listener of its own from then on."""

    suspect: bool = False
    #: the role of the latest listener: ``hub``, ``client`` or ``own``
    role: str = ""


@dataclass(eq=False)
class _Peer:
    """A subscriber in another process, over the socket."""

    writer: asyncio.StreamWriter
    channels: set[str] = field(default_factory=set)
    #: workers of the peer's process present on the hub's connection (direct
    #: delivery): let go of when the peer leaves, so they go with its process
    workers: set[uuid.UUID] = field(default_factory=set)

    def send(self, data: bytes) -> None:
        transport = self.writer.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > _MAX_BACKLOG:
            log.warning("a subscriber of the shared listener lags behind; dropping it")
            transport.abort()
            return
        self.writer.write(data)

    def deliver(self, channel: str, payload: str, line: bytes) -> None:
        self.send(line)

    def close(self) -> None:
        self.writer.transport.abort()

    def socket_fd(self) -> int | None:
        sock = self.writer.get_extra_info("socket")
        return None if sock is None else int(sock.fileno())


@dataclass(eq=False)
class _LocalPeer:
    """The hub's own process: notifications go straight onto its event loop's queue
    (no socket, no JSON), requests run on the hub's loop."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[str, str] | None]
    channels: set[str] = field(default_factory=set)
    workers: set[uuid.UUID] = field(default_factory=set)

    def deliver(self, channel: str, payload: str, line: bytes) -> None:
        with contextlib.suppress(RuntimeError):  # its loop is closed: it is gone
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (channel, payload))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    def socket_fd(self) -> int | None:
        return None


class _Hub:
    """The host's hub: the LISTEN connection and the socket's server, on a thread
    with an event loop of its own (so its process's loop never holds a notification).
    It owns the lock file descriptor from :meth:`start` on and releases it when it
    stops."""

    def __init__(self, db: Database, sock_path: Path, lock_fd: int, check_interval: float) -> None:
        self._db = db
        self._sock_path = sock_path
        self._lock_fd: int | None = lock_fd
        self._check_interval = check_interval
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="amp-listener-hub", daemon=True)
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopping = False
        # the rest lives on the hub's loop
        self._stop: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._real: Listener | None = None
        self._peers: set[_Peer | _LocalPeer] = set()
        self._peer_tasks: set[asyncio.Task[None]] = set()
        self._listened: set[str] = set()
        self._channel = f"amp_hub_{uuid.uuid4().hex}"
        self._pongs: dict[str, asyncio.Future[None]] = {}
        #: the LISTEN connection ended (the server closed it), as opposed to a stop
        self.server_lost = False

    # -- seen from the process's loop -------------------------------------------

    async def start(self, timeout: float) -> None:
        """Start the thread; return once it LISTENs and serves the socket."""
        _running_hubs.add(self)
        self._thread.start()
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._ready), timeout)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the hub (idempotent): its subscribers see EOF, the lock is released."""
        with contextlib.suppress(RuntimeError):  # its loop is closed: stopped already
            self._loop.call_soon_threadsafe(self._request_stop)
        if self._thread.is_alive():
            await asyncio.wait({asyncio.wrap_future(self._done)}, timeout=10.0)

    def attach_local(self, queue: asyncio.Queue[tuple[str, str] | None]) -> _LocalPeer:
        """Subscribe the hub's own process (its running loop) without the socket."""
        peer = _LocalPeer(asyncio.get_running_loop(), queue)
        self._loop.call_soon_threadsafe(self._peers.add, peer)
        return peer

    async def ask(self, peer: _LocalPeer, request: dict[str, Any]) -> dict[str, Any]:
        """Run a request of the hub's own process on the hub's loop."""
        future = asyncio.run_coroutine_threadsafe(self._answer(peer, request), self._loop)
        return await asyncio.wrap_future(future)

    # -- the hub's thread ----------------------------------------------------------

    def _main(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        _hub_started()
        try:
            loop.run_until_complete(self._run())
            loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException as exc:  # never leave start() waiting
            log.exception("the shared listener's hub failed")
            if not self._ready.done():
                self._ready.set_exception(ConnectionLostError(f"the hub failed: {exc}"))
        finally:
            self._release_lock()
            loop.close()
            _hub_stopped()
            _running_hubs.discard(self)
            self._done.set_result(None)

    def forget_in_child(self) -> None:
        """Close this process's copies of the hub's lock and sockets (called in a
        forked child, where the hub's thread does not run)."""
        fds = [self._lock_fd]
        self._lock_fd = None
        if self._server is not None:
            fds += [sock.fileno() for sock in self._server.sockets]
        for peer in self._peers:
            fds.append(peer.socket_fd())
        for fd in fds:
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _request_stop(self) -> None:
        self._stopping = True
        if self._stop is not None:
            self._stop.set()

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock: another process may become the hub

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        if self._stopping:
            self._stop.set()
        server: asyncio.Server | None = None
        try:
            try:
                self._real = self._db.listener()
                await self._real.start()
                await self._real.listen([self._channel], self._db.statement_timeout)
                with contextlib.suppress(FileNotFoundError):
                    self._sock_path.unlink()  # a dead hub's (we hold the lock)
                server = self._server = await asyncio.start_unix_server(
                    self._serve_peer, path=str(self._sock_path), limit=_MAX_BACKLOG
                )
                os.chmod(self._sock_path, 0o600)
            except Exception as exc:
                if not self._ready.done():
                    self._ready.set_exception(exc)
                return
            if not self._ready.set_running_or_notify_cancel():
                return  # start() gave up waiting
            self._ready.set_result(None)
            await self._serve()
        finally:
            # close the socket before the lock goes, so that the next hub's socket
            # is never unlinked by this one
            if server is not None:
                server.close()
                with contextlib.suppress(FileNotFoundError):
                    self._sock_path.unlink()
            for peer in list(self._peers):
                peer.close()
            self._peers.clear()
            if self._peer_tasks:
                # their sockets are closed: they end by themselves (cancelling them
                # makes asyncio's streams log the cancellation as an error)
                await asyncio.wait(set(self._peer_tasks), timeout=1.0)
            self._release_lock()
            real, self._real = self._real, None
            if real is not None:
                await real.close()

    async def _serve(self) -> None:
        assert self._stop is not None
        reader = asyncio.create_task(self._read())
        checker = asyncio.create_task(self._check())
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({reader, checker, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stopping = True
            for task in (reader, checker, stopper):
                await tasks.stop(task)

    async def _read(self) -> None:
        assert self._real is not None
        try:
            async for channel, payload in self._real.notifications():
                if channel == self._channel:
                    echo = self._pongs.get(payload)
                    if echo is not None and not echo.done():
                        echo.set_result(None)
                    continue
                self._forward(channel, payload)
        except ConnectionLostError as exc:
            self.server_lost = True
            log.warning("the shared listener's connection ended: %s", exc)

    async def _check(self) -> None:
        """A NOTIFY round trip over the hub's connection every ``check_interval``
        (psqlpy's listener may stop delivering without a word)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._check_interval)
            assert self._real is not None
            token = uuid.uuid4().hex
            echo: asyncio.Future[None] = loop.create_future()
            self._pongs[token] = echo
            try:
                await self._real.notify(self._channel, token, self._check_interval)
                await asyncio.wait_for(echo, self._check_interval)
            except (TimeoutError, AgentMessagingError) as exc:
                log.warning("the shared listener's health check failed; stopping it: %s", exc)
                return
            finally:
                self._pongs.pop(token, None)

    async def _serve_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._peer_tasks.add(task)
        peer = _Peer(writer)
        self._peers.add(peer)
        try:
            async for line in reader:
                request = json.loads(line)
                reply = await self._answer(peer, request)
                peer.send((json.dumps(reply) + "\n").encode())
        except (ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
            log.debug("a subscriber of the shared listener left: %s", exc)
        finally:
            self._peers.discard(peer)
            writer.close()
            if not self._stopping:
                # a subscriber that left (closed, killed): nothing is handed to its
                # workers any more; its channels go, unless others use them
                try:
                    for worker in peer.workers:
                        if self._real is not None:
                            with contextlib.suppress(AgentMessagingError):
                                await self._real.release(worker, 10.0)
                    await self._unlisten_unused(peer.channels, 10.0)
                except ConnectionLostError as exc:
                    log.warning("the shared listener's connection failed: %s", exc)
                    if self._stop is not None:
                        self._stop.set()
                except AgentMessagingError as exc:
                    log.debug("UNLISTEN of a departed subscriber's channels failed: %s", exc)
            if task is not None:
                self._peer_tasks.discard(task)

    async def _answer(self, peer: _Peer | _LocalPeer, request: dict[str, Any]) -> dict[str, Any]:
        real = self._real
        op = request.get("op")
        reply: dict[str, Any] = {"id": request.get("id")}
        timeout = float(request.get("timeout", 10.0))
        try:
            if real is None or self._stopping:
                raise ConnectionLostError("the hub is closing")
            if op == "listen":
                channels = [str(c) for c in request["channels"]]
                peer.channels.update(channels)
                fresh = [c for c in dict.fromkeys(channels) if c not in self._listened]
                if fresh:
                    await real.listen(fresh, timeout)
                    self._listened.update(fresh)
            elif op == "unlisten":
                channels = [str(c) for c in request["channels"]]
                peer.channels.difference_update(channels)
                await self._unlisten_unused(channels, timeout)
            elif op == "hold":
                worker = uuid.UUID(str(request["worker"]))
                try:
                    reply["held"] = await real.hold(worker, float(request["lease"]), timeout)
                except AgentMessagingError as exc:
                    # not the connection's end (the health check finds that): the
                    # worker is not present, and claims as it always could
                    log.warning("holding worker %s failed: %s", worker, exc)
                    reply["held"] = False
                else:
                    peer.workers.add(worker)
            elif op == "notify":
                await real.notify(str(request["channel"]), str(request["payload"]), timeout)
            elif op == "pid":
                reply["pid"] = await real.backend_pid(timeout)
            elif op == "channels":
                reply["channels"] = await real.listening_channels(timeout)
            else:
                reply["error"] = f"unknown request {op!r}"
        except ConnectionLostError as exc:
            # the connection failed: stop, so that everyone re-elects a hub with a
            # fresh one and catches up (a reply now would leave them on a dead hub)
            reply["error"] = str(exc)
            if self._stop is not None:
                self._stop.set()
        except AgentMessagingError as exc:
            reply["error"] = str(exc)
        except (KeyError, TypeError, ValueError) as exc:  # a malformed request
            reply["error"] = f"bad request: {exc!r}"
        return reply

    async def _unlisten_unused(self, channels: Iterable[str], timeout: float) -> None:
        """UNLISTEN those of ``channels`` that no subscriber uses any more (so the
        connection LISTENs the union of its subscribers' channels, not every channel
        it ever heard of)."""
        real = self._real
        unused = [
            c
            for c in dict.fromkeys(channels)
            if c in self._listened and not any(c in peer.channels for peer in self._peers)
        ]
        if real is None or not unused:
            return
        # forgotten before the statement: a LISTEN of one of them from now on is
        # sent after this UNLISTEN, on the same connection, so it wins
        self._listened.difference_update(unused)
        await real.unlisten(unused, timeout)

    def _forward(self, channel: str, payload: str) -> None:
        data: bytes | None = None
        for peer in list(self._peers):
            if channel in peer.channels:
                if data is None:
                    data = (json.dumps({"c": channel, "p": payload}) + "\n").encode()
                peer.deliver(channel, payload, data)


class SharedListener:
    """A listener for :class:`~agent_messaging.dispatcher.Dispatcher` that shares one
    LISTEN connection between the processes of a host (through the hub, which this
    process may run, or its own connection when sharing fails). Same methods as
    :class:`database.Listener`."""

    def __init__(
        self, db: Database, socket_dir: Path, state: ShareState, check_interval: float = 5.0
    ) -> None:
        self._db = db
        self._state = state
        self._check_interval = check_interval
        key = share_key(db.listen_dsn)
        self._dir = socket_dir
        self._sock_path = socket_dir / f"listener-{key}.sock"
        self._lock_path = socket_dir / f"listener-{key}.lock"
        self._role = ""
        # own
        self._real: Listener | None = None
        # hub (this process runs it, and subscribes to it on its thread, without the
        # socket)
        self._hub: _Hub | None = None
        self._local: _LocalPeer | None = None
        # hub and client: the subscription
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        self._next_id = 0

    @property
    def role(self) -> str:
        """``hub`` (this process runs the host's hub, on a thread of its own, and
        subscribes to it), ``client`` (subscribed to the hub of another process) or
        ``own`` (not shared)."""
        return self._role

    @property
    def ends_with_server(self) -> bool:
        """Whether the end of :meth:`notifications` means the server closed the
        LISTEN connection (not that a hub went away)."""
        if self._role == "own":
            return True
        return self._role == "hub" and self._hub is not None and self._hub.server_lost

    # -- start -----------------------------------------------------------------

    async def start(self) -> None:
        """Start the hub, or subscribe to it, or (failing both) listen alone."""
        if not self._state.suspect:
            try:
                await asyncio.wait_for(self._share(), self._db.connect_timeout)
                self._state.role = self._role
                return
            except (OSError, TimeoutError, ConnectionLostError) as exc:
                log.warning("cannot share the host's listener, using one of our own: %s", exc)
                await self.close()
            except BaseException:
                await self.close()
                raise
        self._real = self._db.listener()
        await self._real.start()
        self._role = self._state.role = "own"

    async def _share(self) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        delay = 0.005
        while True:
            fd = self._try_lock()
            if fd is not None:
                self._hub = _Hub(self._db, self._sock_path, fd, self._check_interval)
                await self._hub.start(self._db.connect_timeout)
                # this process takes its notifications from the hub's thread directly
                self._local = self._hub.attach_local(self._queue)
                self._role = "hub"
                return
            try:
                await self._subscribe_to_hub()
                self._role = "client"
                return
            except (ConnectionRefusedError, FileNotFoundError):
                # the hub is starting, or exited and another is about to take over
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _try_lock(self) -> int | None:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    async def _subscribe_to_hub(self) -> None:
        self._reader, self._writer = await asyncio.open_unix_connection(
            str(self._sock_path), limit=_MAX_BACKLOG
        )
        self._read_task = asyncio.create_task(self._client_read(), name="amp-hub-client")

    # -- the subscription --------------------------------------------------------

    async def _client_read(self) -> None:
        assert self._reader is not None
        try:
            async for line in self._reader:
                message = json.loads(line)
                if "c" in message:
                    self._queue.put_nowait((message["c"], message["p"]))
                    continue
                waiter = self._pending.pop(message.get("id"), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
        except (ConnectionError, ValueError) as exc:
            log.debug("the shared listener's socket failed: %s", exc)
        finally:
            self._queue.put_nowait(None)
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionLostError("the host's shared listener left"))
            self._pending.clear()

    async def _request(self, timeout: float, **request: Any) -> dict[str, Any]:
        if self._local is not None and self._hub is not None:
            request["timeout"] = timeout
            try:
                reply = await asyncio.wait_for(self._hub.ask(self._local, request), timeout + 1.0)
            except (TimeoutError, RuntimeError):
                raise ConnectionLostError("the host's shared listener did not answer") from None
            if "error" in reply:
                raise ConnectionLostError(f"the host's shared listener failed: {reply['error']}")
            return reply
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            raise ConnectionLostError("the host's shared listener left")
        self._next_id += 1
        request["id"] = self._next_id
        request["timeout"] = timeout
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = waiter
        try:
            writer.write((json.dumps(request) + "\n").encode())
            reply = await asyncio.wait_for(waiter, timeout + 1.0)
        except TimeoutError:
            # the hub holds the lock but does not answer: listen alone from now on
            self._state.suspect = True
            raise ConnectionLostError("the host's shared listener did not answer") from None
        finally:
            self._pending.pop(request["id"], None)
        if "error" in reply:
            raise ConnectionLostError(f"the host's shared listener failed: {reply['error']}")
        return reply

    # -- the listener interface -------------------------------------------------

    async def listen(self, channels: list[str], timeout: float) -> None:
        """LISTEN on ``channels`` (through the hub, when shared)."""
        if self._real is not None:
            await self._real.listen(channels, timeout)
        else:
            await self._request(timeout, op="listen", channels=channels)

    async def unlisten(self, channels: list[str], timeout: float) -> None:
        """Stop receiving ``channels`` (the hub keeps LISTENing a channel that any
        process of the host may use again)."""
        if self._real is not None:
            await self._real.unlisten(channels, timeout)
        else:
            await self._request(timeout, op="unlisten", channels=channels)

    async def notify(self, channel: str, payload: str, timeout: float) -> None:
        """NOTIFY over the (shared) LISTEN connection: a health check's echo then
        proves the hub, its connection and the socket alive."""
        if self._real is not None:
            await self._real.notify(channel, payload, timeout)
        else:
            await self._request(timeout, op="notify", channel=channel, payload=payload)

    async def hold(self, worker: Any, lease: float, timeout: float) -> bool:
        """``amp.hold_worker`` on the (shared) LISTEN connection: the hub lets go of
        the worker when this process's subscription ends (its process gone), or the
        lock goes with the hub's connection."""
        if self._real is not None:
            return await self._real.hold(worker, lease, timeout)
        return bool(
            (await self._request(timeout, op="hold", worker=str(worker), lease=lease))["held"]
        )

    async def backend_pid(self, timeout: float) -> int:
        """The server process id of the (shared) LISTEN connection."""
        if self._real is not None:
            return await self._real.backend_pid(timeout)
        return int((await self._request(timeout, op="pid"))["pid"])

    async def listening_channels(self, timeout: float) -> list[str]:
        """The channels the (shared) LISTEN connection LISTENs on, for every process
        of the host when shared."""
        if self._real is not None:
            return await self._real.listening_channels(timeout)
        return [str(c) for c in (await self._request(timeout, op="channels"))["channels"]]

    async def notifications(self) -> AsyncIterator[tuple[str, str]]:
        """``(channel, payload)`` of the notifications of this process's channels,
        until the connection (or the hub) goes: then :class:`ConnectionLostError`."""
        if self._real is not None:
            async for item in self._real.notifications():
                yield item
            return
        while True:
            forwarded = await self._queue.get()
            if forwarded is None:
                raise ConnectionLostError("the host's shared listener left")
            yield forwarded

    async def close(self) -> None:
        """Close (idempotent). A hub closes its socket (its subscribers see EOF and
        one of them takes over) before it releases the lock."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.transport.abort()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(BaseException):
                await self._read_task
            self._read_task = None
        hub, self._hub = self._hub, None
        self._local = None
        if hub is not None:
            await hub.stop()
        real, self._real = self._real, None
        if real is not None:
            await real.close()
