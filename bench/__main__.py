"""``python -m bench [--quick|--smoke] [--only SECTIONS] [--processes 1,10,50] [--out FILE]
[--database-url URL]``.

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
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from agent_messaging import AgentMessaging, Config, migrations
from agent_messaging.database import resolve_dsn
from bench import peers
from bench.basics import oneway_raw, oneway_sdk, sync_raw, sync_sdk
from bench.common import ROOT, Child, latency, with_database
from bench.delivery import batch_sdk, handler_start_raw, handler_start_sdk
from bench.mcp import mcp_ask
from bench.meetings import meetings
from bench.scale import attached_processes

R = TypeVar("R")

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
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1", [app + "%"]
        )
        return {
            "agents": agents,
            "rss_mib": round(ready["rss_kib"] / 1024, 1),
            "connections": int(connections),
        }
    finally:
        await child.stop()


# -- the run --------------------------------------------------------------------

DEFAULT_OUT = str(ROOT / "bench" / "results" / "latest.json")


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


SECTIONS = (
    "oneway",
    "sync",
    "latency",
    "batch",
    "peers",
    "meetings",
    "footprint",
    "attached",
    "mcp",
)


def vacuum(dsn: str) -> None:
    """VACUUM ANALYZE the tables a section churns, before the next one: servers may run
    with autovacuum off (this machine's does), and each section would otherwise pay
    for the dead rows of the sections before it, the raw baseline's table included
    (pgbench vacuums before a run for the same reason)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "VACUUM (ANALYZE) amp.deliveries, amp.messages, amp.sessions, amp.meetings,"
            " amp.meeting_participants, amp.meeting_events, bench_raw"
        )


async def own_listeners(dsn: str, measure: Callable[[AgentMessaging[Any]], Awaitable[R]]) -> R:
    """``measure`` with listeners of their own (``share_listener`` off) in this
    process and the children it starts: the cost of the shared listener's hop."""
    saved = os.environ.get("AMP_SHARE_LISTENER")
    os.environ["AMP_SHARE_LISTENER"] = "0"
    try:
        config = Config(database_url=dsn, apply_migrations=False, share_listener=False)
        async with AgentMessaging[Any](config) as own:
            return await measure(own)
    finally:
        if saved is None:
            os.environ.pop("AMP_SHARE_LISTENER", None)
        else:
            os.environ["AMP_SHARE_LISTENER"] = saved


async def bench(
    server: str,
    quick: bool,
    only: set[str] | None = None,
    processes: list[int] | None = None,
    smoke: bool = False,
    share: str = "on",
) -> dict[str, Any]:
    """Every section of ``only`` (all by default); ``quick`` and ``smoke`` (the test's:
    smaller still) use small N."""
    quick = quick or smoke
    n_oneway = 500 if quick else 5000
    n_sync = 100 if quick else 1000
    n_latency = 50 if quick else 1000
    n_batch, batch_size = (2000, 500) if quick else (20000, 1000)
    agent_counts = [1, 100] if quick else [1, 100, 1000]
    if smoke:
        n_oneway, n_sync, n_latency, n_batch, batch_size = 100, 20, 10, 500, 100
        agent_counts = [1, 10]
    if processes is None:
        processes = [1, 2] if quick else [1, 10, 50]
    run = only if only else set(SECTIONS)
    database = f"amp_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    dsn = with_database(server, database)
    mode = "smoke" if smoke else "quick" if quick else "full"
    result: dict[str, Any] = {"quick": quick, "mode": mode, "machine": machine()}
    ratios: dict[str, float] = {}
    try:
        await asyncio.to_thread(migrations.upgrade, dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE bench_raw (id bigserial PRIMARY KEY, body jsonb,"
                " created_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SHOW server_version").fetchone()
            result["server_version"] = str(row[0]) if row else None
        result["note"] = "2-core machine shared with other test runs: figures are noisy"
        config = Config(database_url=dsn, apply_migrations=False)
        async with AgentMessaging[Any](config) as sdk:
            await sdk.register_organization("bench", "Bench")
            await sdk.register_agent("bench_sender", "bench")
            if "oneway" in run:
                oneway: dict[str, Any] = {"n": n_oneway}
                for tasks in (1, 4):
                    await asyncio.to_thread(vacuum, dsn)
                    sdk_rate = await oneway_sdk(dsn, sdk, n_oneway, tasks)
                    raw_rate = await oneway_raw(dsn, n_oneway, tasks)
                    oneway[f"senders_{tasks}"] = {
                        "sdk_msgs_per_s": round(sdk_rate, 1),
                        "raw_msgs_per_s": round(raw_rate, 1),
                        "ratio": round(sdk_rate / raw_rate, 3),
                    }
                result["oneway_throughput"] = oneway
                ratios["oneway_throughput"] = oneway["senders_1"]["ratio"]
                ratios["oneway_throughput_4_senders"] = oneway["senders_4"]["ratio"]
            sync: dict[str, Any] | None = None
            if "sync" in run or "meetings" in run:
                await asyncio.to_thread(vacuum, dsn)
                sync = {
                    "n": n_sync,
                    "sdk": latency(await sync_sdk(dsn, sdk, n_sync)),
                    "raw": latency(await sync_raw(dsn, n_sync)),
                }
                # the same with the reply read back by the asker (amp.notify_content =
                # off: no content in any hint), one statement more per round trip
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f'ALTER DATABASE "{database}" SET amp.notify_content = off')
                try:
                    sync["sdk_reply_read_back"] = latency(await sync_sdk(dsn, sdk, n_sync))
                finally:
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        conn.execute(f'ALTER DATABASE "{database}" RESET amp.notify_content')
                sync["sdk_own_listener"] = latency(
                    await own_listeners(dsn, lambda own: sync_sdk(dsn, own, n_sync))
                )
                result["sync_round_trip"] = sync
                ratios["sync_p50"] = round(sync["sdk"]["p50_ms"] / sync["raw"]["p50_ms"], 3)
                ratios["sync_p50_reply_read_back"] = round(
                    sync["sdk_reply_read_back"]["p50_ms"] / sync["raw"]["p50_ms"], 3
                )
            if "latency" in run:
                await asyncio.to_thread(vacuum, dsn)
                start: dict[str, Any] = {
                    "n": n_latency,
                    "sdk": latency(await handler_start_sdk(dsn, sdk, n_latency)),
                    "raw_notify_hop": latency(await handler_start_raw(dsn, n_latency)),
                    "sdk_own_listener": latency(
                        await own_listeners(dsn, lambda own: handler_start_sdk(dsn, own, n_latency))
                    ),
                }
                result["handler_start"] = start
                ratios["handler_start_p50_vs_notify_hop"] = round(
                    start["sdk"]["p50_ms"] / start["raw_notify_hop"]["p50_ms"], 3
                )
            if "batch" in run:
                await asyncio.to_thread(vacuum, dsn)
                rate = await batch_sdk(dsn, sdk, n_batch, batch_size)
                result["batch_throughput"] = {
                    "n": n_batch,
                    "batch_size": batch_size,
                    "sdk_msgs_per_s": round(rate, 1),
                }
            if "peers" in run:
                result["peers"] = {
                    peer: await peers.measure(peer, dsn, n_latency, n_oneway, batch_size)
                    for peer in peers.PEERS
                }
            if "meetings" in run:
                await asyncio.to_thread(vacuum, dsn)
                meeting_figures = await meetings(sdk, quick)
                result["meetings"] = meeting_figures
                assert sync is not None
                # a hand-off is one hop (speak -> next speaker), a ping-pong two
                ratios["meeting_handoff_p50_vs_raw_hop"] = round(
                    meeting_figures["handoff_5_agents"]["p50_ms"] / (sync["raw"]["p50_ms"] / 2),
                    3,
                )
            if "mcp" in run:
                result["mcp_ask"] = await mcp_ask(dsn, sdk, 20 if smoke else 50 if quick else 300)
            if "footprint" in run:
                result["footprint"] = [
                    await footprint(server, database, sdk, k) for k in agent_counts
                ]
            if "attached" in run:
                for shared in {"off": [False], "on": [True], "both": [True, False]}[share]:
                    key = "attached_processes" if shared else "attached_processes_own"
                    result[key] = await attached_processes(
                        server,
                        database,
                        processes,
                        n_oneway // 2,
                        n_sync // 2,
                        1.0 if quick else 5.0,
                        share=shared,
                    )
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    result["ratios"] = ratios
    return result


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    mode = result.get("mode", "quick" if result["quick"] else "full")
    table = Table(title=f"agent-messaging bench ({mode})")
    for column in ("measure", "SDK", "raw psqlpy", "SDK/raw"):
        table.add_column(column)
    ow = result.get("oneway_throughput")
    if ow:
        for tasks in (1, 4):
            row = ow[f"senders_{tasks}"]
            table.add_row(
                f"one-way msgs/s, {tasks} sender task(s), N={ow['n']}",
                f"{row['sdk_msgs_per_s']:.0f}",
                f"{row['raw_msgs_per_s']:.0f}",
                f"{row['ratio']:.2f}",
            )
    batch = result.get("batch_throughput")
    if batch:
        table.add_row(
            f"send_many msgs/s delivered, batches of {batch['batch_size']}, N={batch['n']}",
            f"{batch['sdk_msgs_per_s']:.0f}",
            "",
            "",
        )
    sync = result.get("sync_round_trip")
    if sync:
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            ratio = sync["sdk"][key] / sync["raw"][key]
            table.add_row(
                f"sync round trip {key[:3]} ms, N={sync['n']}",
                f"{sync['sdk'][key]:.2f}",
                f"{sync['raw'][key]:.2f}",
                f"{ratio:.2f}",
            )
        own = sync["sdk_own_listener"]
        table.add_row(
            "sync p50 / p99 ms, listeners of their own (share_listener off)",
            f"{own['p50_ms']:.2f} / {own['p99_ms']:.2f}",
            "",
            f"{own['p50_ms'] / sync['raw']['p50_ms']:.2f}",
        )
        read_back = sync["sdk_reply_read_back"]
        table.add_row(
            "sync p50 / p99 ms, reply read back (amp.notify_content = off)",
            f"{read_back['p50_ms']:.2f} / {read_back['p99_ms']:.2f}",
            "",
            f"{read_back['p50_ms'] / sync['raw']['p50_ms']:.2f}",
        )
    start = result.get("handler_start")
    if start:
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            ratio = start["sdk"][key] / start["raw_notify_hop"][key]
            table.add_row(
                f"send -> handler start {key[:3]} ms, N={start['n']}",
                f"{start['sdk'][key]:.2f}",
                f"{start['raw_notify_hop'][key]:.2f} (NOTIFY hop)",
                f"{ratio:.2f}",
            )
        own_start = start["sdk_own_listener"]
        table.add_row(
            "send -> handler start p50 / p99 ms, listeners of their own",
            f"{own_start['p50_ms']:.2f} / {own_start['p99_ms']:.2f}",
            "",
            f"{own_start['p50_ms'] / start['raw_notify_hop']['p50_ms']:.2f}",
        )
    for peer, figures in result.get("peers", {}).items():
        if "skipped" in figures:
            table.add_row(f"peer {peer}", "skipped: not installed", "", "")
            continue
        name = f"{peer} {figures['version']}"
        hs = figures["handler_start"]
        table.add_row(f"{name}: msgs/s one by one", f"{figures['oneway_msgs_per_s']:.0f}", "", "")
        table.add_row(
            f"{name}: msgs/s, batches of {figures['batch_size']}",
            f"{figures['batch_msgs_per_s']:.0f}",
            "",
            "",
        )
        table.add_row(
            f"{name}: enqueue -> job start p50/p95/p99 ms",
            f"{hs['p50_ms']:.2f} / {hs['p95_ms']:.2f} / {hs['p99_ms']:.2f}",
            "",
            "",
        )
    for fp in result.get("footprint", []):
        table.add_row(
            f"idle SDK process, {fp['agents']} agent(s)",
            f"{fp['rss_mib']} MiB RSS, {fp['connections']} conn",
            "",
            "",
        )
    m = result.get("meetings")
    if m and sync:
        hop = sync["raw"]["p50_ms"] / 2
        table.add_row(
            f"meeting turn hand-off p50 ms (5 agents, N={m['handoff_5_agents']['n']})",
            f"{m['handoff_5_agents']['p50_ms']:.2f}",
            f"{hop:.2f} (one raw hop)",
            f"{result['ratios']['meeting_handoff_p50_vs_raw_hop']:.2f}",
        )
        table.add_row(
            "meeting turn hand-off p99 ms", f"{m['handoff_5_agents']['p99_ms']:.2f}", "", ""
        )
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
    for key, how in (("attached_processes", ", shared"), ("attached_processes_own", ", own")):
        attached = result.get(key)
        if not attached:
            continue
        for k, row in attached["by_processes"].items():
            if "skipped" in row:
                table.add_row(
                    f"{k} SDK processes attached{how}", f"skipped: {row['skipped']}", "", ""
                )
                continue
            ceiling = f"{row['ceiling']['commits_per_s']:.0f} notifying commits/s"
            if k == "0":
                table.add_row("no SDK process attached", ceiling, "", "")
                continue
            table.add_row(
                f"{k} SDK processes attached{how} ({row['connections']} conns,"
                f" {row.get('listeners', '?')} listening)",
                f"{ceiling}; one-way {row['oneway_msgs_per_s']:.0f} msgs/s;"
                f" sync p50 {row['sync']['p50_ms']:.2f} ms",
                "",
                "",
            )
    mcp = result.get("mcp_ask", {})
    if "skipped" in mcp:
        table.add_row("MCP ask round trip (stdio)", f"skipped: {mcp['skipped']}", "", "")
    elif mcp:
        for key in ("p50_ms", "p99_ms"):
            table.add_row(
                f"ask round trip {key[:3]} ms, MCP stdio vs SDK, N={mcp['n']}",
                f"{mcp['mcp_stdio'][key]:.2f} (MCP)",
                f"{mcp['sdk'][key]:.2f} (SDK)",
                f"{mcp['mcp_stdio'][key] / mcp['sdk'][key]:.2f}",
            )
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small N, under a minute")
    parser.add_argument("--smoke", action="store_true", help="smallest N (the test's)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--only", default="", help=f"comma-separated sections, of: {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        "--processes", default=None, help="attached SDK process counts (default 1,10,50)"
    )
    parser.add_argument(
        "--share-listener",
        choices=["off", "on", "both"],
        default="on",
        help="the attached section's processes share the host's listener (share_listener, "
        "the SDK's default: on), have one each (off), or both runs",
    )
    parser.add_argument(
        "--history", action="store_true", help="the long-history scenario (bench/history.py) only"
    )
    parser.add_argument("--history-size", type=int, default=10_000_000)
    parser.add_argument("--history-n", type=int, default=300, help="samples per hot path")
    parser.add_argument("--soak-minutes", type=float, default=0.0)
    parser.add_argument("--soak-rate", type=float, default=100.0, help="one-way messages/s")
    args = parser.parse_args()
    only = {s for s in args.only.split(",") if s}
    if only - set(SECTIONS):
        parser.error(f"unknown sections: {sorted(only - set(SECTIONS))}")
    processes = [int(k) for k in args.processes.split(",")] if args.processes else None
    server = args.database_url or os.environ.get("AMP_DATABASE_URL")
    if not server:
        server = asyncio.run(resolve_dsn(Config()))
    if args.history:
        history(server, args)
        return
    result = asyncio.run(
        asyncio.wait_for(
            bench(server, args.quick, only, processes, args.smoke, args.share_listener), 3600
        )
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"written to {out}")


def history(server: str, args: argparse.Namespace) -> None:
    """``--history``: the long-history scenario, written to bench/results/history.json."""
    from bench.history import history_bench, print_history

    def log(line: str) -> None:
        print(line, flush=True)

    found = asyncio.run(
        history_bench(
            server, args.history_size, args.history_n, args.soak_minutes, args.soak_rate, log
        )
    )
    found["machine"] = machine()
    out = Path(args.out if args.out != DEFAULT_OUT else ROOT / "bench/results/history.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(found, indent=2) + "\n")
    print_history(found)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
