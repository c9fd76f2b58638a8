"""A long history: the hot paths on an empty database vs one with millions of messages.

``python -m bench --history [--history-size N] [--soak-minutes M] [--database-url URL]``

1. On a fresh scratch database, measures sends, claims, inbox reads, sync round trips
   and meeting turn hand-offs (``measure``).
2. Builds a history of N messages (default 10 million) with ``INSERT ... SELECT`` in
   chunks: most of it settled the way real traffic leaves it (one-way delivered,
   async read, sync requests with their replies in sessions, meeting messages of
   ended meetings), spread over 1000 agents, the measured agents included; then
   ``VACUUM ANALYZE`` (what autovacuum does after a bulk load).
3. Measures again, and prints both with their ratio (target: within 10 %).
4. With ``--soak-minutes``, sends at a steady rate (one-way to a handler in a child
   process, async send + read, sync round trips) and samples the hot tables'
   live/dead tuples and autovacuum runs (``pg_stat_user_tables``) every 30 s.

Heavy: run it on a server of your own, niced (``nice -n 19 python -m bench --history``).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

import psqlpy
import psycopg

from agent_messaging import AgentMessaging, Config, migrations
from bench.meetings import run_meeting

HOT_TABLES = (
    "messages",
    "deliveries",
    "sessions",
    "meetings",
    "meeting_participants",
    "meeting_events",
    "workers",
    "worker_agents",
)
CHUNK = 1_000_000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": pct(values, 0.5), "p99_ms": pct(values, 0.99)}


async def timed(n: int, step: Any) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await step(i)
        samples.append(time.perf_counter() - start)
    return samples


async def measure(dsn: str, sdk: AgentMessaging[Any], n: int) -> dict[str, Any]:
    """Latency of each hot path, ``n`` samples each, on the database as it is."""
    from bench.common import Child

    result: dict[str, Any] = {}
    result["send"] = summary(
        await timed(n, lambda i: sdk.one_way.send("h_sender", "h_sink", {"n": i}))
    )
    # claims: a worker serving h_sink leases 16 of its pending messages and acks them
    pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=2)
    conn = await pool.connection()
    worker = str(
        (await conn.execute("SELECT amp.register_worker('bench', 0)::text AS w")).result()[0]["w"]
    )
    await conn.execute("SELECT amp.serve_agents($1::text::uuid, ARRAY['h_sink'])", [worker])

    async def claim(_: int) -> None:
        rows = (
            await conn.execute(
                "SELECT id::text AS id FROM amp.claim_deliveries($1::text::uuid, 16, "
                "make_interval(secs => 30), 5)",
                [worker],
            )
        ).result()
        claims.append(time.perf_counter() - started[0])
        if rows:
            await conn.execute(
                "SELECT amp.ack_deliveries($1::text::uuid, $2::text[]::uuid[])",
                [worker, [r["id"] for r in rows]],
            )

    claims: list[float] = []
    started = [0.0]
    for i in range(max(4, n // 8)):
        started[0] = time.perf_counter()
        await claim(i)
    result["claim_16"] = summary(claims)
    await conn.execute("SELECT amp.unregister_worker($1::text::uuid)", [worker])
    pool.close()

    async def inbox(i: int) -> None:
        await sdk.async_conversation.send("h_sender", "h_reader", {"n": i})
        got = await sdk.async_conversation.get_unread_messages("h_reader")
        assert got, "the message just sent is unread"

    result["async_send_and_read"] = summary(await timed(n, inbox))
    child = await Child.start("sdk-handle", dsn, "h_sync", str(10**9))
    try:
        await child.expect("ready")
        await sdk.sync_conversation.send_and_wait("h_sender", "h_sync", {"warm": 1}, 30)
        result["sync_round_trip"] = summary(
            await timed(
                n, lambda i: sdk.sync_conversation.send_and_wait("h_sender", "h_sync", {"n": i}, 30)
            )
        )
    finally:
        await child.stop()
    handoffs: list[float] = []
    await run_meeting(sdk, 5, max(4, n // 25), handoffs)
    result["meeting_handoff"] = summary(handoffs)
    return result


BUILD = """
WITH agents AS (
    SELECT array_agg(id ORDER BY external_id) AS ids FROM amp.agents
    WHERE external_id LIKE 'h\\_%%'
)
INSERT INTO amp.messages (message_type, sender_id, recipient_id, content, delivery_status,
                          attempts, delivered_at, read_at, created_at)
SELECT CASE WHEN i %% 10 < 7 THEN 'one_way' ELSE 'async' END,
       ids[1 + (i * 7) %% cardinality(ids)],
       ids[1 + (i * 13 + 1) %% cardinality(ids)],
       jsonb_build_object('n', i, 'text', 'history message number ' || i),
       CASE WHEN i %% 10 < 7 THEN CASE WHEN i %% 1000 = 0 THEN 'failed' ELSE 'delivered' END END,
       CASE WHEN i %% 10 < 7 THEN 1 ELSE 0 END,
       CASE WHEN i %% 10 < 7 THEN now() - interval '1 day' END,
       CASE WHEN i %% 10 >= 7 THEN now() - interval '1 day' END,
       now() - interval '1 day'
FROM agents, generate_series(%s::bigint, %s::bigint) i
WHERE ids[1 + (i * 7) %% cardinality(ids)] <> ids[1 + (i * 13 + 1) %% cardinality(ids)]
"""


def build_history(dsn: str, size: int, log: Any) -> dict[str, Any]:
    """``size`` settled messages over 1000 agents, the measured ones among them."""
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO amp.agents (external_id, organization_id, name) "
            "SELECT 'h_' || lpad(g::text, 4, '0'), o.id, 'history agent' "
            "FROM amp.organizations o, generate_series(1, 1000) g WHERE o.external_id = 'bench'"
        )
        done = 0
        while done < size:
            upto = min(size, done + CHUNK)
            conn.execute(BUILD, (done + 1, upto))
            done = upto
            log(f"history: {done:,} / {size:,} messages ({time.perf_counter() - started:.0f} s)")
        log("history: VACUUM ANALYZE")
        conn.execute("VACUUM ANALYZE amp.messages")
        row = conn.execute(
            "SELECT count(*), pg_total_relation_size('amp.messages') FROM amp.messages"
        ).fetchone()
        assert row is not None
    return {
        "messages": int(row[0]),
        "total_bytes": int(row[1]),
        "build_seconds": round(time.perf_counter() - started, 1),
    }


def table_stats(dsn: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count, "
            "pg_total_relation_size(relid) FROM pg_stat_user_tables "
            "WHERE schemaname = 'amp' AND relname = ANY (%s)",
            (list(HOT_TABLES),),
        ).fetchall()
    return {
        r[0]: {"live": r[1], "dead": r[2], "autovacuums": r[3], "autoanalyzes": r[4], "bytes": r[5]}
        for r in rows
    }


async def soak(
    dsn: str, sdk: AgentMessaging[Any], minutes: float, rate: float, log: Any
) -> list[dict[str, Any]]:
    """A steady ``rate`` of one-way messages/s to a handler in a child process, plus an
    async send + read and a sync round trip per 10 of them; samples every 30 s."""
    from bench.common import Child

    handler = await Child.start("sdk-handle", dsn, "h_soak", str(10**12))
    syncer = await Child.start("sdk-handle", dsn, "h_sync", str(10**9))
    samples: list[dict[str, Any]] = []
    try:
        await handler.expect("ready")
        await syncer.expect("ready")
        start = time.monotonic()
        end = start + minutes * 60
        next_sample = start
        sent = 0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                stats = await asyncio.to_thread(table_stats, dsn)
                samples.append({"t_s": round(now - start), "sent": sent, "tables": stats})
                m = stats["messages"]
                log(
                    f"soak t={now - start:.0f}s sent={sent} messages live={m['live']} "
                    f"dead={m['dead']} autovacuums={m['autovacuums']}"
                )
                next_sample += 30
            await sdk.one_way.send("h_sender", "h_soak", {"n": sent})
            sent += 1
            if sent % 10 == 0:
                await sdk.async_conversation.send("h_sender", "h_reader", {"n": sent})
                await sdk.async_conversation.get_unread_messages("h_reader")
                await sdk.sync_conversation.send_and_wait("h_sender", "h_sync", {"n": sent}, 30)
            lag = start + sent / rate - time.monotonic()
            if lag > 0:
                await asyncio.sleep(lag)  # pacing the load, not synchronising
        stats = await asyncio.to_thread(table_stats, dsn)
        samples.append({"t_s": round(time.monotonic() - start), "sent": sent, "tables": stats})
    finally:
        await handler.stop()
        await syncer.stop()
    return samples


async def history_bench(
    server: str,
    size: int,
    n: int,
    soak_minutes: float,
    soak_rate: float,
    log: Any,
    rounds: int = 3,
) -> dict[str, Any]:
    """Two scratch databases, one empty and one with the history, measured in
    alternating rounds (the machine's load drifts; alternating keeps it fair); the
    ratio is the median over rounds of full p50 / empty p50."""
    from bench.common import with_database

    tag = uuid.uuid4().hex[:10]
    names = {"empty": f"amp_bench_hist_e_{tag}", "full": f"amp_bench_hist_f_{tag}"}
    with psycopg.connect(server, autocommit=True) as admin:
        for name in names.values():
            admin.execute(f'CREATE DATABASE "{name}"')
        # what the soak's dead-tuple figures depend on (a server with autovacuum off
        # never vacuums; the figures then say nothing about the schema's settings)
        settings = {
            name: admin.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("server_version", "autovacuum", "autovacuum_naptime")
        }
    dsns = {k: with_database(server, v) for k, v in names.items()}
    result: dict[str, Any] = {
        "history_size": size,
        "n": n,
        "rounds": rounds,
        "server": settings,
    }
    try:
        sdks: dict[str, AgentMessaging[Any]] = {}
        for kind, dsn in dsns.items():
            await asyncio.to_thread(migrations.upgrade, dsn)
            sdk = AgentMessaging[Any](Config(database_url=dsn, apply_migrations=False))
            await sdk.initialize()
            sdks[kind] = sdk
            await sdk.register_organization("bench", "Bench")
            for name in ("h_sender", "h_sink", "h_reader", "h_sync", "h_soak"):
                await sdk.register_agent(name, "bench")
        try:
            result["history"] = await asyncio.to_thread(build_history, dsns["full"], size, log)
            runs: dict[str, list[dict[str, Any]]] = {"empty": [], "full": []}
            for r in range(rounds):
                for kind in ("empty", "full"):
                    log(f"round {r + 1}/{rounds}: measuring the {kind} database")
                    runs[kind].append(await measure(dsns[kind], sdks[kind], n))
            result["runs"] = runs
            paths = list(runs["empty"][0])
            result["empty"] = {p: median_run(runs["empty"], p) for p in paths}
            result["full"] = {p: median_run(runs["full"], p) for p in paths}
            result["ratio_p50"] = {
                p: round(
                    statistics.median(
                        f[p]["p50_ms"] / e[p]["p50_ms"]
                        for e, f in zip(runs["empty"], runs["full"], strict=True)
                    ),
                    3,
                )
                for p in paths
            }
            if soak_minutes > 0:
                result["soak"] = {
                    "minutes": soak_minutes,
                    "rate_per_s": soak_rate,
                    "samples": await soak(dsns["full"], sdks["full"], soak_minutes, soak_rate, log),
                }
        finally:
            for sdk in sdks.values():
                await sdk.close()
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            for name in names.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return result


def median_run(runs: list[dict[str, Any]], path: str) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(r[path]["p50_ms"] for r in runs), 3),
        "p99_ms": round(statistics.median(r[path]["p99_ms"] for r in runs), 3),
    }


def print_history(result: dict[str, Any]) -> None:
    print(
        f"history of {result['history']['messages']:,} messages "
        f"({result['history']['total_bytes'] / 2**30:.2f} GiB, built in "
        f"{result['history']['build_seconds']} s)"
    )
    print(
        f"{'path':24} {'empty p50':>10} {'full p50':>10} {'ratio':>7} "
        f"{'empty p99':>10} {'full p99':>10}"
    )
    for key, ratio in result["ratio_p50"].items():
        e, f = result["empty"][key], result["full"][key]
        print(
            f"{key:24} {e['p50_ms']:>10} {f['p50_ms']:>10} {ratio:>7} "
            f"{e['p99_ms']:>10} {f['p99_ms']:>10}"
        )
    for sample in result.get("soak", {}).get("samples", []):
        m = sample["tables"]["messages"]
        print(
            f"soak t={sample['t_s']:>5}s sent={sample['sent']:>7} messages live={m['live']} "
            f"dead={m['dead']} autovacuums={m['autovacuums']} bytes={m['bytes']}"
        )
