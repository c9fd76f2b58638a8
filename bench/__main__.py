"""``python -m bench [--quick] [--out FILE] [--database-url URL]``.

Runs every benchmark in one run on one server: the SDK and the raw psqlpy baseline
doing the same work, across two OS processes. Creates a scratch database on the
server (migrated), drops it afterwards. Figures on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psqlpy
import psycopg

from agent_messaging import AgentMessaging, Config, migrations
from agent_messaging.database import resolve_dsn
from bench.meetings import meetings

ROOT = Path(__file__).resolve().parents[1]
STEP_TIMEOUT = 120.0
DEFAULT_OUT = str(ROOT / "bench" / "results" / "latest.json")


class Child:
    """``python -m bench.worker ...`` in its own OS process, JSON lines on stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.worker",
            *args,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def expect(self, name: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                err = b""
                if self.proc.stderr is not None:
                    err = await self.proc.stderr.read()
                raise RuntimeError(f"bench worker exited: {err.decode()[-2000:]}")
            event: dict[str, Any] = json.loads(line)
            if event["event"] == name:
                return event

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await asyncio.wait_for(self.proc.wait(), 10)


def with_database(dsn: str, name: str, application_name: str | None = None) -> str:
    parts = urlsplit(dsn)
    query = parts.query
    if application_name:
        query = (query + "&" if query else "") + f"application_name={application_name}"
    return urlunsplit(parts._replace(path="/" + name, query=query))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def run_senders(tasks: int, n: int, send: Callable[[int], Awaitable[Any]]) -> None:
    counter = iter(range(n))

    async def sender() -> None:
        for i in counter:
            await send(i)

    await asyncio.gather(*(sender() for _ in range(tasks)))


# -- 1. one-way throughput ---------------------------------------------------


async def oneway_sdk(dsn: str, sdk: AgentMessaging[Any], n: int, tasks: int) -> float:
    recipient = f"bench_rcv_{uuid.uuid4().hex[:8]}"
    await sdk.register_agent(recipient, "bench")
    child = await Child.start("sdk-handle", dsn, recipient, str(n))
    try:
        await child.expect("ready")
        start = time.perf_counter()
        await run_senders(tasks, n, lambda i: sdk.one_way.send("bench_sender", recipient, {"n": i}))
        await child.expect("done")
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:  # handled is not acknowledged: wait for every ack
            delivered = await sdk.db.fetch_value(
                "SELECT count(*) FROM amp.messages m JOIN amp.agents a ON a.id = m.recipient_id"
                " WHERE a.external_id = $1 AND m.delivery_status = 'delivered'",
                [recipient],
            )
            if delivered >= n:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {delivered}/{n} acknowledged")
            await asyncio.sleep(0.005)
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


def latency(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p95_ms": round(percentile(samples, 0.95), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
    }


# -- 4. footprint ---------------------------------------------------------------


async def footprint(
    server: str, database: str, sdk: AgentMessaging[Any], agents: int
) -> dict[str, Any]:
    prefix = f"bench_fp{agents}_{uuid.uuid4().hex[:6]}_"
    for i in range(agents):
        await sdk.register_agent(f"{prefix}{i}", "bench")
    app = f"amp_bench_fp_{uuid.uuid4().hex[:8]}"
    child = await Child.start(
        "footprint", with_database(server, database, app), prefix, str(agents)
    )
    try:
        ready = await child.expect("ready")
        connections = await sdk.db.fetch_value(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", [app]
        )
        return {
            "agents": agents,
            "rss_mib": round(ready["rss_kib"] / 1024, 1),
            "connections": int(connections),
        }
    finally:
        await child.stop()


# -- the run --------------------------------------------------------------------


def machine() -> dict[str, Any]:
    ram_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(ram_kib / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


async def bench(server: str, quick: bool) -> dict[str, Any]:
    n_oneway = 500 if quick else 5000
    n_sync = 100 if quick else 1000
    agent_counts = [1, 100] if quick else [1, 100, 1000]
    database = f"amp_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    dsn = with_database(server, database)
    try:
        await asyncio.to_thread(migrations.upgrade, dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE bench_raw (id bigserial PRIMARY KEY, body jsonb,"
                " created_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SHOW server_version").fetchone()
            version = str(row[0]) if row else None
        config = Config(database_url=dsn, apply_migrations=False)
        async with AgentMessaging[Any](config) as sdk:
            await sdk.register_organization("bench", "Bench")
            await sdk.register_agent("bench_sender", "bench")
            oneway: dict[str, Any] = {"n": n_oneway}
            for tasks in (1, 4):
                sdk_rate = await oneway_sdk(dsn, sdk, n_oneway, tasks)
                raw_rate = await oneway_raw(dsn, n_oneway, tasks)
                oneway[f"senders_{tasks}"] = {
                    "sdk_msgs_per_s": round(sdk_rate, 1),
                    "raw_msgs_per_s": round(raw_rate, 1),
                    "ratio": round(sdk_rate / raw_rate, 3),
                }
            sync: dict[str, Any] = {
                "n": n_sync,
                "sdk": latency(await sync_sdk(dsn, sdk, n_sync)),
                "raw": latency(await sync_raw(dsn, n_sync)),
            }
            meeting_figures = await meetings(sdk, quick)
            prints = [await footprint(server, database, sdk, k) for k in agent_counts]
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return {
        "quick": quick,
        "machine": machine(),
        "server_version": version,
        "note": "2-core machine shared with other test runs: figures are noisy",
        "oneway_throughput": oneway,
        "sync_round_trip": sync,
        "meetings": meeting_figures,
        "footprint": prints,
        "ratios": {
            "oneway_throughput": oneway["senders_1"]["ratio"],
            "oneway_throughput_4_senders": oneway["senders_4"]["ratio"],
            "sync_p50": round(sync["sdk"]["p50_ms"] / sync["raw"]["p50_ms"], 3),
            # a hand-off is one hop (speak -> next speaker), a ping-pong two
            "meeting_handoff_p50_vs_raw_hop": round(
                meeting_figures["handoff_5_agents"]["p50_ms"] / (sync["raw"]["p50_ms"] / 2), 3
            ),
        },
    }


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"agent-messaging bench ({'quick' if result['quick'] else 'full'})")
    for column in ("measure", "SDK", "raw psqlpy", "SDK/raw"):
        table.add_column(column)
    ow = result["oneway_throughput"]
    for tasks in (1, 4):
        row = ow[f"senders_{tasks}"]
        table.add_row(
            f"one-way msgs/s, {tasks} sender task(s), N={ow['n']}",
            f"{row['sdk_msgs_per_s']:.0f}",
            f"{row['raw_msgs_per_s']:.0f}",
            f"{row['ratio']:.2f}",
        )
    sync = result["sync_round_trip"]
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        ratio = sync["sdk"][key] / sync["raw"][key]
        table.add_row(
            f"sync round trip {key[:3]} ms, N={sync['n']}",
            f"{sync['sdk'][key]:.2f}",
            f"{sync['raw'][key]:.2f}",
            f"{ratio:.2f}",
        )
    for fp in result["footprint"]:
        table.add_row(
            f"idle SDK process, {fp['agents']} agent(s)",
            f"{fp['rss_mib']} MiB RSS, {fp['connections']} conn",
            "",
            "",
        )
    m = result["meetings"]
    hop = sync["raw"]["p50_ms"] / 2
    table.add_row(
        f"meeting turn hand-off p50 ms (5 agents, N={m['handoff_5_agents']['n']})",
        f"{m['handoff_5_agents']['p50_ms']:.2f}",
        f"{hop:.2f} (one raw hop)",
        f"{result['ratios']['meeting_handoff_p50_vs_raw_hop']:.2f}",
    )
    table.add_row("meeting turn hand-off p99 ms", f"{m['handoff_5_agents']['p99_ms']:.2f}", "", "")
    c = m["concurrent"]
    table.add_row(
        f"{c['meetings']} concurrent {c['agents']}-agent meetings x {c['rounds']} rounds",
        f"{c['seconds']:.2f} s",
        "",
        "",
    )
    big = m["large"]
    table.add_row(
        f"one {big['agents']}-agent meeting x {big['rounds']} rounds",
        f"{big['seconds']:.2f} s",
        "",
        "",
    )
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small N, under a minute")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--history", action="store_true", help="the long-history scenario (bench/history.py) only"
    )
    parser.add_argument("--history-size", type=int, default=10_000_000)
    parser.add_argument("--history-n", type=int, default=300, help="samples per hot path")
    parser.add_argument("--soak-minutes", type=float, default=0.0)
    parser.add_argument("--soak-rate", type=float, default=100.0, help="one-way messages/s")
    args = parser.parse_args()
    server = args.database_url or os.environ.get("AMP_DATABASE_URL")
    if not server:
        server = asyncio.run(resolve_dsn(Config()))
    if args.history:
        from bench.history import history_bench, print_history

        def log(line: str) -> None:
            print(line, flush=True)

        found = asyncio.run(
            history_bench(
                server,
                args.history_size,
                args.history_n,
                args.soak_minutes,
                args.soak_rate,
                log,
            )
        )
        found["machine"] = machine()
        out = Path(args.out if args.out != DEFAULT_OUT else ROOT / "bench/results/history.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(found, indent=2) + "\n")
        print_history(found)
        print(f"written to {out}")
        return
    result = asyncio.run(asyncio.wait_for(bench(server, args.quick), 900))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
