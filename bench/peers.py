"""Peers as baselines: pgqueuer and procrastinate, same server, same run.

Each is driven the way its documentation shows: pgqueuer with an asyncpg
connection, ``Queries.enqueue`` on the producer side (lists of jobs for a batch) and
a ``PgQueuer`` with one entrypoint on the consumer side, run with its defaults;
procrastinate with a ``PsycopgConnector``, ``task.defer_async`` (``batch_defer_async``
for a batch) and ``app.run_worker_async`` (``concurrency`` 16, as the SDK's
``handler_concurrency``). The consumer is a child process:

    python -m bench.peers pgqueuer DSN
    python -m bench.peers procrastinate DSN

It stamps each job's start (``{"stamp": k}`` jobs) and counts the rest, like
``bench.worker sdk-stamp``. A peer that is not installed is reported as skipped.
The one-by-one and batch figures are timed until the consumer has *run* every job
(the peers acknowledge on their own schedule), the SDK's until every message is
also acknowledged in the table: the comparison favours the peers.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from importlib.metadata import version
from typing import Any

from bench.common import Child, latency
from bench.delivery import WARM_UP, stamped
from bench.worker import Targets, emit

PEERS = ("pgqueuer", "procrastinate")
CONCURRENCY = 16


def installed(peer: str) -> bool:
    """Whether the peer (and, for pgqueuer, its asyncpg driver) can be imported."""
    modules = ["pgqueuer", "asyncpg"] if peer == "pgqueuer" else [peer]
    return all(importlib.util.find_spec(m) is not None for m in modules)


# -- the consumers (child processes) --------------------------------------------


async def consume_pgqueuer(dsn: str) -> None:
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job

    targets = Targets()
    connection = await asyncpg.connect(dsn)
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint("bench")  # type: ignore[untyped-decorator]
    async def process(job: Job) -> None:
        now = time.monotonic()
        if job.payload:
            body = json.loads(job.payload)
            if "stamp" in body:
                emit("started", t=now, stamp=body["stamp"])
        targets.hit()

    reader = asyncio.create_task(targets.read_stdin())
    emit("ready")
    await pgq.run()
    reader.cancel()


def procrastinate_app(dsn: str) -> Any:
    """The procrastinate app and its one task (the same in producer and worker)."""
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
    return app


async def consume_procrastinate(dsn: str) -> None:
    targets = Targets()
    app = procrastinate_app(dsn)

    @app.task(name="bench", queue="bench")  # type: ignore[untyped-decorator]
    async def bench_task(stamp: int | None = None) -> None:
        now = time.monotonic()
        if stamp is not None:
            emit("started", t=now, stamp=stamp)
        targets.hit()

    reader = asyncio.create_task(targets.read_stdin())
    async with app.open_async():
        emit("ready")
        await app.run_worker_async(queues=["bench"], concurrency=CONCURRENCY)
    reader.cancel()


# -- the producers (this process) -------------------------------------------------


class Producer:
    """Enqueues jobs of one peer: one at a time, or a batch in one call."""

    async def open(self, dsn: str) -> None:
        raise NotImplementedError

    async def one(self, body: dict[str, Any]) -> None:
        raise NotImplementedError

    async def many(self, count: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class PgqueuerProducer(Producer):
    async def open(self, dsn: str) -> None:
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        self.connection = await asyncpg.connect(dsn)
        self.queries = Queries(AsyncpgDriver(self.connection))
        await self.queries.install()

    async def one(self, body: dict[str, Any]) -> None:
        await self.queries.enqueue("bench", json.dumps(body).encode())

    async def many(self, count: int) -> None:
        payload = json.dumps({}).encode()
        await self.queries.enqueue(["bench"] * count, [payload] * count, [0] * count)

    async def close(self) -> None:
        await self.connection.close()


class ProcrastinateProducer(Producer):
    async def open(self, dsn: str) -> None:
        self.app = procrastinate_app(dsn)

        @self.app.task(name="bench", queue="bench")  # type: ignore[untyped-decorator]
        async def bench_task(stamp: int | None = None) -> None:
            return None

        self.task = bench_task
        await self.app.open_async()
        await self.app.schema_manager.apply_schema_async()

    async def one(self, body: dict[str, Any]) -> None:
        await self.task.defer_async(**body)

    async def many(self, count: int) -> None:
        await self.task.batch_defer_async(*({} for _ in range(count)))

    async def close(self) -> None:
        await self.app.close_async()


async def measure(peer: str, dsn: str, n_latency: int, n: int, batch: int) -> dict[str, Any]:
    """Handler-start latency, one-by-one throughput and batch throughput of one peer
    (one consumer process for all three). Skipped when not installed."""
    if not installed(peer):
        return {"skipped": f"{peer} is not installed (pip install -e '.[bench]')"}
    producer: Producer = PgqueuerProducer() if peer == "pgqueuer" else ProcrastinateProducer()
    await producer.open(dsn)
    child = await Child.start(peer, dsn, module="bench.peers")
    try:
        await child.expect("ready")
        samples = []
        for i in range(-WARM_UP, n_latency):
            start = time.monotonic()
            await producer.one({"stamp": i})
            started = await stamped(child, i)
            if i >= 0:
                samples.append((started - start) * 1000)

        await child.tell(f"target {n}")
        start = time.perf_counter()
        for _ in range(n):
            await producer.one({})
        await child.expect("done")
        one_by_one = n / (time.perf_counter() - start)

        await child.tell(f"target {n}")
        start = time.perf_counter()
        for first in range(0, n, batch):
            await producer.many(min(batch, n - first))
        await child.expect("done")
        batched = n / (time.perf_counter() - start)
    finally:
        await child.stop()
        await producer.close()
    return {
        "version": version(peer),
        "oneway_msgs_per_s": round(one_by_one, 1),
        "batch_msgs_per_s": round(batched, 1),
        "batch_size": batch,
        "n": n,
        "handler_start": {"n": n_latency, **latency(samples)},
        "consumer": "pgq.run() defaults"
        if peer == "pgqueuer"
        else f"run_worker_async(concurrency={CONCURRENCY})",
    }


def main() -> None:
    peer, dsn = sys.argv[1], sys.argv[2]
    if peer == "pgqueuer":
        asyncio.run(consume_pgqueuer(dsn))
    elif peer == "procrastinate":
        asyncio.run(consume_procrastinate(dsn))
    else:
        raise SystemExit(f"unknown peer {peer}")


if __name__ == "__main__":
    main()
