"""One LISTEN connection per host: SDK processes on one machine share it.

PostgreSQL up to 18 signals every listening backend of a database on each notifying
commit, so every listening process taxes every send. With ``share_listener`` on, the
processes of one user on one machine that use the same server and database share one
LISTEN connection:

* the first process that needs a listener takes an exclusive ``flock`` on
  ``listener-<hash>.lock`` in a private runtime directory (mode 0700: only the same
  user's processes can subscribe), opens the LISTEN connection and serves a Unix
  socket ``listener-<hash>.sock`` beside it: it is the host's *hub*;
* the others connect to that socket and subscribe to their channels; the hub LISTENs
  the union of everyone's channels and forwards each notification to the processes
  subscribed to its channel; their health checks are NOTIFY round trips through the
  hub, so they prove the whole path;
* when the hub exits or is killed, the kernel releases its lock and closes its
  socket: the others see EOF, one of them takes the lock and becomes the hub, the
  rest subscribe to it. Each then catches up from the tables, as after any lost
  listener (listen, check, wait, re-check);
* a process that cannot share (no runtime directory, a hub that does not answer)
  falls back to a LISTEN connection of its own.

``<hash>`` is a digest of the server's URL (so of host, port, database and role).
The wire format is one JSON object per line: requests ``{"id", "op", ...}`` with
replies ``{"id", ...}``, and notifications ``{"c": channel, "p": payload}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .database import Database, Listener
from .exceptions import AgentMessagingError, ConnectionLostError

log = logging.getLogger("agent_messaging.hub")

#: a subscriber whose socket buffers this much unread data is dropped (it then
#: reconnects and catches up from the tables)
_MAX_BACKLOG = 16 * 1024 * 1024


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
    writer: asyncio.StreamWriter
    channels: set[str] = field(default_factory=set)

    def send(self, data: bytes) -> None:
        transport = self.writer.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > _MAX_BACKLOG:
            log.warning("a subscriber of the shared listener lags behind; dropping it")
            transport.abort()
            return
        self.writer.write(data)


class SharedListener:
    """A listener for :class:`~agent_messaging.dispatcher.Dispatcher` that shares one
    LISTEN connection between the processes of a host (the hub's, or the process's
    own when sharing fails). Same methods as :class:`database.Listener`."""

    def __init__(self, db: Database, socket_dir: Path, state: ShareState) -> None:
        self._db = db
        self._state = state
        key = hashlib.sha256(db.dsn.encode()).hexdigest()[:24]
        self._dir = socket_dir
        self._sock_path = socket_dir / f"listener-{key}.sock"
        self._lock_path = socket_dir / f"listener-{key}.lock"
        self._role = ""
        # hub and own
        self._real: Listener | None = None
        # hub
        self._lock_fd: int | None = None
        self._server: asyncio.Server | None = None
        self._peers: set[_Peer] = set()
        self._local: set[str] = set()
        self._listened: set[str] = set()
        self._peer_tasks: set[asyncio.Task[None]] = set()
        # client
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        self._next_id = 0

    @property
    def role(self) -> str:
        """``hub`` (this process holds the host's LISTEN connection), ``client``
        (subscribed to the hub of another process) or ``own`` (not shared)."""
        return self._role

    @property
    def ends_with_server(self) -> bool:
        """A client's notifications end when the hub goes, not the server."""
        return self._role != "client"

    # -- start -----------------------------------------------------------------

    async def start(self) -> None:
        """Become the hub, or subscribe to it, or (failing both) listen alone."""
        if not self._state.suspect:
            try:
                await asyncio.wait_for(self._share(), self._db.connect_timeout)
                self._state.role = self._role
                return
            except (OSError, TimeoutError, ConnectionLostError) as exc:
                log.warning("cannot share the host's listener, using one of our own: %s", exc)
                await self.close()
        self._real = self._db.listener()
        await self._real.start()
        self._role = self._state.role = "own"

    async def _share(self) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        delay = 0.005
        while True:
            if self._try_lock():
                await self._become_hub()
                return
            try:
                await self._subscribe_to_hub()
                return
            except (ConnectionRefusedError, FileNotFoundError):
                # the hub is starting, or exited and another is about to take over
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _try_lock(self) -> bool:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    async def _become_hub(self) -> None:
        try:
            self._real = self._db.listener()
            await self._real.start()
            with contextlib.suppress(FileNotFoundError):
                self._sock_path.unlink()  # a dead hub's (we hold the lock)
            self._server = await asyncio.start_unix_server(
                self._serve_peer, path=str(self._sock_path)
            )
            os.chmod(self._sock_path, 0o600)
        except BaseException:
            await self.close()
            raise
        self._role = "hub"

    async def _subscribe_to_hub(self) -> None:
        self._reader, self._writer = await asyncio.open_unix_connection(str(self._sock_path))
        self._role = "client"
        self._read_task = asyncio.create_task(self._client_read(), name="amp-hub-client")

    # -- the hub's side ----------------------------------------------------------

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
            if task is not None:
                self._peer_tasks.discard(task)

    async def _answer(self, peer: _Peer, request: dict[str, Any]) -> dict[str, Any]:
        real = self._real
        op = request.get("op")
        reply: dict[str, Any] = {"id": request.get("id")}
        timeout = float(request.get("timeout", 10.0))
        try:
            if real is None:
                raise ConnectionLostError("the hub is closing")
            if op == "listen":
                channels = [str(c) for c in request["channels"]]
                peer.channels.update(channels)
                await self._listen(channels, timeout)
            elif op == "unlisten":
                peer.channels.difference_update(request["channels"])
            elif op == "notify":
                await real.notify(str(request["channel"]), str(request["payload"]), timeout)
            elif op == "pid":
                reply["pid"] = await real.backend_pid(timeout)
            else:
                reply["error"] = f"unknown request {op!r}"
        except AgentMessagingError as exc:
            reply["error"] = str(exc)
        return reply

    async def _listen(self, channels: list[str], timeout: float) -> None:
        assert self._real is not None
        fresh = [c for c in dict.fromkeys(channels) if c not in self._listened]
        if fresh:
            await self._real.listen(fresh, timeout)
            self._listened.update(fresh)

    def _forward(self, channel: str, payload: str) -> None:
        data: bytes | None = None
        for peer in list(self._peers):
            if channel in peer.channels:
                if data is None:
                    data = (json.dumps({"c": channel, "p": payload}) + "\n").encode()
                peer.send(data)

    # -- the client's side -------------------------------------------------------

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
        """LISTEN on ``channels`` (through the hub, when subscribed to one)."""
        if self._role == "client":
            await self._request(timeout, op="listen", channels=channels)
        elif self._role == "hub":
            self._local.update(channels)
            await self._listen(channels, timeout)
        else:
            assert self._real is not None
            await self._real.listen(channels, timeout)

    async def unlisten(self, channels: list[str], timeout: float) -> None:
        """Stop receiving ``channels`` (the hub keeps LISTENing a channel that any
        process of the host may use again)."""
        if self._role == "client":
            await self._request(timeout, op="unlisten", channels=channels)
        elif self._role == "hub":
            self._local.difference_update(channels)
        else:
            assert self._real is not None
            await self._real.unlisten(channels, timeout)

    async def notify(self, channel: str, payload: str, timeout: float) -> None:
        """NOTIFY over the (shared) LISTEN connection: a health check's echo then
        proves the hub, its connection and the socket alive."""
        if self._role == "client":
            await self._request(timeout, op="notify", channel=channel, payload=payload)
        else:
            assert self._real is not None
            await self._real.notify(channel, payload, timeout)

    async def backend_pid(self, timeout: float) -> int:
        """The server process id of the (shared) LISTEN connection."""
        if self._role == "client":
            return int((await self._request(timeout, op="pid"))["pid"])
        assert self._real is not None
        return await self._real.backend_pid(timeout)

    async def notifications(self) -> AsyncIterator[tuple[str, str]]:
        """``(channel, payload)`` of the notifications of this process's channels,
        until the connection (or the hub) goes: then :class:`ConnectionLostError`."""
        if self._role == "client":
            while True:
                item = await self._queue.get()
                if item is None:
                    raise ConnectionLostError("the host's shared listener left")
                yield item
        assert self._real is not None
        hub = self._role == "hub"
        async for channel, payload in self._real.notifications():
            if hub:
                self._forward(channel, payload)
                if channel not in self._local:
                    continue
            yield channel, payload

    async def close(self) -> None:
        """Close (idempotent). A hub closes its socket (its subscribers see EOF and
        one of them takes over) before it releases the lock."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for peer in list(self._peers):
            peer.writer.transport.abort()
        self._peers.clear()
        for task in list(self._peer_tasks):
            task.cancel()
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self._sock_path.unlink()
            self._unlock()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.transport.abort()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(BaseException):
                await self._read_task
            self._read_task = None
        real, self._real = self._real, None
        if real is not None:
            await real.close()
