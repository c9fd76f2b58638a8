"""The other OS process of each benchmark; prints JSON lines on stdout.

python -m bench.worker sdk-handle DSN AGENT N [--reply]
python -m bench.worker raw-listen DSN CHANNEL N
python -m bench.worker raw-pong DSN
python -m bench.worker footprint DSN PREFIX K
python -m bench.worker sdk-stamp DSN AGENT      (stamps; "target N" lines on stdin)
python -m bench.worker raw-stamp DSN CHANNEL    (stamps each notification)
python -m bench.worker idle DSN AGENT           (an attached SDK process, one idle agent)
python -m bench.worker burn DSN AGENT MS        (a handler that burns MS ms of CPU per message)

Stamps are ``time.monotonic()`` readings (CLOCK_MONOTONIC: one clock for every
process of the machine), so the parent can subtract its own send time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import psqlpy

from agent_messaging import AgentMessaging, Config, MessageContext


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def sdk_config(dsn: str) -> Config:
    return Config(database_url=dsn, apply_migrations=False, handler_concurrency=16)


async def sdk_handle(dsn: str, agent: str, n: int) -> None:
    handled = 0
    done = asyncio.Event()
    async with AgentMessaging[Any](sdk_config(dsn)) as sdk:

        @sdk.register_handler(agent)
        async def handler(message: Any, context: MessageContext) -> Any:
            nonlocal handled
            handled += 1
            if handled >= n:
                done.set()
            return message if context.requires_reply else None

        await sdk.serve_handlers()
        emit("ready")
        await done.wait()
        emit("done", handled=handled)
        await asyncio.Event().wait()  # keep acking until killed


async def raw_listen(dsn: str, channel: str, n: int) -> None:
    pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=2)
    listener = pool.listener()
    await listener.startup()
    await listener.connection.execute(f'LISTEN "{channel}"')
    emit("ready")
    count = 0
    async for _ in listener:
        count += 1
        if count >= n:
            break
    emit("done", handled=count)
    await asyncio.Event().wait()


async def raw_pong(dsn: str) -> None:
    pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=2)
    conn = await pool.connection()
    listener = pool.listener()
    await listener.startup()
    await listener.connection.execute('LISTEN "bench_ping"')
    emit("ready")
    async for message in listener:
        await conn.execute("SELECT pg_notify('bench_pong', $1)", [message.payload])


async def footprint(dsn: str, prefix: str, k: int) -> None:
    async with AgentMessaging[Any](sdk_config(dsn)) as sdk:
        for i in range(k):

            async def handler(message: Any, context: MessageContext) -> Any:
                return None

            sdk.register_handler(f"{prefix}{i}")(handler)
        await sdk.serve_handlers()
        await asyncio.sleep(1.0)  # let the delivery loop settle
        emit("ready", rss_kib=rss_kib(), pid=os.getpid())
        await asyncio.Event().wait()


class Targets:
    """Counts handled messages; prints ``done`` whenever the count reaches a target
    the parent wrote on stdin (``target N``: N more than the count at that line)."""

    def __init__(self) -> None:
        self.handled = 0
        self.targets: list[int] = []

    def add(self, more: int) -> None:
        self.targets.append(self.handled + more)
        self.check()

    def hit(self) -> None:
        self.handled += 1
        self.check()

    def check(self) -> None:
        while self.targets and self.handled >= self.targets[0]:
            self.targets.pop(0)
            emit("done", handled=self.handled)

    async def read_stdin(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            command, _, value = line.partition(" ")
            if command == "target":
                self.add(int(value))


async def sdk_stamp(dsn: str, agent: str) -> None:
    """Handler start stamps for messages with ``{"stamp": k}``, a count for the rest."""
    targets = Targets()
    async with AgentMessaging[Any](sdk_config(dsn)) as sdk:

        @sdk.register_handler(agent)
        async def handler(message: Any, context: MessageContext) -> None:
            now = time.monotonic()
            if isinstance(message, dict) and "stamp" in message:
                emit("started", t=now, stamp=message["stamp"])
            targets.hit()

        await sdk.serve_handlers()
        emit("ready")
        await targets.read_stdin()
        await asyncio.Event().wait()


async def raw_stamp(dsn: str, channel: str) -> None:
    pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=2)
    listener = pool.listener()
    await listener.startup()
    await listener.connection.execute(f'LISTEN "{channel}"')
    emit("ready")
    async for message in listener:
        emit("started", t=time.monotonic(), stamp=int(message.payload))


async def idle(dsn: str, agent: str) -> None:
    """An SDK process as deployments run them: serving an agent, nothing to do."""
    async with AgentMessaging[Any](Config(database_url=dsn, apply_migrations=False)) as sdk:

        @sdk.register_handler(agent)
        async def handler(message: Any, context: MessageContext) -> None:
            return None

        await sdk.serve_handlers()
        emit("ready", pid=os.getpid())
        await asyncio.Event().wait()


async def burn(dsn: str, agent: str, ms: float) -> None:
    """A handler that holds the event loop: ``ms`` milliseconds of CPU per message
    (pure Python, as CPU-bound handler code does). Prints how this process listens."""
    async with AgentMessaging[Any](sdk_config(dsn)) as sdk:

        @sdk.register_handler(agent)
        async def handler(message: Any, context: MessageContext) -> None:
            until = time.perf_counter() + ms / 1000
            while time.perf_counter() < until:
                pass

        await sdk.serve_handlers()
        await sdk.dispatcher.wait_connected(30)
        emit("ready", role=sdk.dispatcher.listener_role, pid=os.getpid())
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("dsn")
    parser.add_argument("args", nargs="*")
    a = parser.parse_args()
    if a.command == "sdk-handle":
        asyncio.run(sdk_handle(a.dsn, a.args[0], int(a.args[1])))
    elif a.command == "raw-listen":
        asyncio.run(raw_listen(a.dsn, a.args[0], int(a.args[1])))
    elif a.command == "raw-pong":
        asyncio.run(raw_pong(a.dsn))
    elif a.command == "footprint":
        asyncio.run(footprint(a.dsn, a.args[0], int(a.args[1])))
    elif a.command == "sdk-stamp":
        asyncio.run(sdk_stamp(a.dsn, a.args[0]))
    elif a.command == "raw-stamp":
        asyncio.run(raw_stamp(a.dsn, a.args[0]))
    elif a.command == "idle":
        asyncio.run(idle(a.dsn, a.args[0]))
    elif a.command == "burn":
        asyncio.run(burn(a.dsn, a.args[0], float(a.args[1])))
    else:
        raise SystemExit(f"unknown command {a.command}")


if __name__ == "__main__":
    main()
