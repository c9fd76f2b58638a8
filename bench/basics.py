"""The first benchmarks: one-way throughput and the sync round trip, SDK and raw."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import psqlpy

from agent_messaging import AgentMessaging
from bench.common import STEP_TIMEOUT, Child, run_senders

# -- 1. one-way throughput ---------------------------------------------------


async def wait_acked(sdk: AgentMessaging[Any], recipient: str, n: int) -> None:
    """Handled is not acknowledged: wait until ``n`` messages to ``recipient`` are
    ``delivered`` in the table."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        delivered = await sdk.db.fetch_value(
            "SELECT count(*) FROM amp.messages m JOIN amp.agents a ON a.id = m.recipient_id"
            " WHERE a.external_id = $1 AND m.delivery_status = 'delivered'",
            [recipient],
        )
        if delivered >= n:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {delivered}/{n} acknowledged")
        await asyncio.sleep(0.005)


async def oneway_sdk(dsn: str, sdk: AgentMessaging[Any], n: int, tasks: int) -> float:
    recipient = f"bench_rcv_{uuid.uuid4().hex[:8]}"
    await sdk.register_agent(recipient, "bench")
    child = await Child.start("sdk-handle", dsn, recipient, str(n))
    try:
        await child.expect("ready")
        start = time.perf_counter()
        await run_senders(tasks, n, lambda i: sdk.one_way.send("bench_sender", recipient, {"n": i}))
        await child.expect("done")
        await wait_acked(sdk, recipient, n)
        return n / (time.perf_counter() - start)
    finally:
        await child.stop()


async def oneway_raw(dsn: str, n: int, tasks: int) -> float:
    channel = f"bench_raw_{uuid.uuid4().hex[:8]}"
    pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=tasks + 1)
    child = await Child.start("raw-listen", dsn, channel, str(n))
    try:
        await child.expect("ready")
        conns = [await pool.connection() for _ in range(tasks)]
        free = list(conns)

        async def send(i: int) -> None:
            conn = free.pop()
            try:
                await conn.execute(
                    "WITH i AS (INSERT INTO bench_raw (body) VALUES ($1::text::jsonb)"
                    " RETURNING id) SELECT pg_notify($2, i.id::text) FROM i",
                    [json.dumps({"n": i}), channel],
                )
            finally:
                free.append(conn)

        start = time.perf_counter()
        await run_senders(tasks, n, send)
        await child.expect("done")
        return n / (time.perf_counter() - start)
    finally:
        await child.stop()
        pool.close()


# -- 2. sync round trip -------------------------------------------------------


async def sync_sdk(dsn: str, sdk: AgentMessaging[Any], n: int) -> list[float]:
    recipient = f"bench_sync_{uuid.uuid4().hex[:8]}"
    await sdk.register_agent(recipient, "bench")
    child = await Child.start("sdk-handle", dsn, recipient, str(10**9))
    try:
        await child.expect("ready")
        await sdk.sync_conversation.send_and_wait("bench_sender", recipient, {"warm": 1}, 30)
        samples = []
        for i in range(n):
            start = time.perf_counter()
            await sdk.sync_conversation.send_and_wait("bench_sender", recipient, {"n": i}, 30)
            samples.append((time.perf_counter() - start) * 1000)
        return samples
    finally:
        await child.stop()


async def sync_raw(dsn: str, n: int) -> list[float]:
    pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=2)
    child = await Child.start("raw-pong", dsn)
    listener = pool.listener()
    try:
        await child.expect("ready")
        conn = await pool.connection()
        await listener.startup()
        await listener.connection.execute('LISTEN "bench_pong"')
        messages = aiter(listener)
        samples = []
        for i in range(-1, n):  # -1: warm-up
            start = time.perf_counter()
            await conn.execute("SELECT pg_notify('bench_ping', $1)", [str(i)])
            while True:
                message = await asyncio.wait_for(anext(messages), 30)
                if message.payload == str(i):
                    break
            if i >= 0:
                samples.append((time.perf_counter() - start) * 1000)
        return samples
    finally:
        await child.stop()
        await listener.shutdown()
        pool.close()
