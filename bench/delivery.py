"""Send -> handler start latency (one message at a time) and batch throughput.

The handler runs in a child process (``bench.worker sdk-stamp``) that stamps the
moment each handler starts with ``time.monotonic()``, the same clock the sender
reads before sending (CLOCK_MONOTONIC is one clock for the whole machine).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import psqlpy

from agent_messaging import AgentMessaging
from bench.basics import wait_acked
from bench.common import Child

WARM_UP = 3


async def stamped(child: Child, stamp: int, timeout: float = 60.0) -> float:
    """The child's start stamp of message ``stamp``."""
    while True:
        event = await child.expect("started", timeout)
        if event["stamp"] == stamp:
            return float(event["t"])


async def handler_start_sdk(dsn: str, sdk: AgentMessaging[Any], n: int) -> list[float]:
    """ms from calling ``one_way.send`` to the handler starting in another process."""
    recipient = f"bench_lat_{uuid.uuid4().hex[:8]}"
    await sdk.register_agent(recipient, "bench")
    child = await Child.start("sdk-stamp", dsn, recipient)
    try:
        await child.expect("ready")
        samples = []
        for i in range(-WARM_UP, n):
            start = time.monotonic()
            await sdk.one_way.send("bench_sender", recipient, {"stamp": i})
            started = await stamped(child, i)
            if i >= 0:
                samples.append((started - start) * 1000)
        return samples
    finally:
        await child.stop()


async def handler_start_raw(dsn: str, n: int) -> list[float]:
    """The floor: ms from a bare ``pg_notify`` to a psqlpy listener in another process
    receiving it (one NOTIFY hop)."""
    channel = f"bench_hop_{uuid.uuid4().hex[:8]}"
    pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=2)
    child = await Child.start("raw-stamp", dsn, channel)
    try:
        await child.expect("ready")
        conn = await pool.connection()
        samples = []
        for i in range(-WARM_UP, n):
            start = time.monotonic()
            await conn.execute("SELECT pg_notify($1, $2)", [channel, str(i)])
            started = await stamped(child, i)
            if i >= 0:
                samples.append((started - start) * 1000)
        return samples
    finally:
        await child.stop()
        pool.close()


async def batch_sdk(dsn: str, sdk: AgentMessaging[Any], n: int, batch: int) -> float:
    """msgs/s: ``one_way.send_many`` batches of ``batch`` from this process, timed until
    a handler in another process has handled all ``n`` and all are acknowledged."""
    recipient = f"bench_batch_{uuid.uuid4().hex[:8]}"
    await sdk.register_agent(recipient, "bench")
    child = await Child.start("sdk-stamp", dsn, recipient)
    try:
        await child.expect("ready")
        await child.tell(f"target {n}")
        start = time.perf_counter()
        for first in range(0, n, batch):
            pairs = [(recipient, {"n": i}) for i in range(first, min(n, first + batch))]
            await sdk.one_way.send_many("bench_sender", pairs)
        await child.expect("done")
        await wait_acked(sdk, recipient, n)
        return n / (time.perf_counter() - start)
    finally:
        await child.stop()
