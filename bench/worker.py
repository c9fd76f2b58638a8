"""The other OS process of each benchmark; prints JSON lines on stdout.

python -m bench.worker sdk-handle DSN AGENT N [--reply]
python -m bench.worker raw-listen DSN CHANNEL N
python -m bench.worker raw-pong DSN
python -m bench.worker footprint DSN PREFIX K
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    else:
        raise SystemExit(f"unknown command {a.command}")


if __name__ == "__main__":
    main()
