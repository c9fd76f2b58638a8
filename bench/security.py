"""``python -m bench.security [--quick] [--rounds R] [--database-url URL]``: the cost of
access control.

The same login role (a member of an organization's role, granted ``amp_user``, not a
superuser) runs one-way throughput (one sender, a handler in another process) and
sync round trips (p50) twice: on a database where the organization is bound to
no role (open) and on one where it is bound to the login's group, so every call
checks the role; and the server time of one send (many sends in one statement, so
the client and the network are not in it). The rounds alternate (open, bound, open,
bound, ...) and the best round of each counts, which keeps some of the noise of a
shared machine out of the ratio.

Also the cost of the boundary itself: the server time of one send, run by the
migrating (super)user, on the open database and on a copy whose functions are made
plain (``SECURITY INVOKER``, no pinned ``search_path``), in the same rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import psqlpy
import psycopg
from psycopg import sql

from agent_messaging import AgentMessaging, Config, migrations
from agent_messaging.database import resolve_dsn
from bench.common import STEP_TIMEOUT, Child, run_senders, with_database


def as_role(dsn: str, role: str) -> str:
    """The same URL, logging in as ``role`` (no password: a local trust login)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rsplit('@', 1)[-1]}"))


async def oneway(dsn: str, admin_dsn: str, sdk: AgentMessaging[Any], n: int) -> float:
    """Messages per second, sent to a handler in another process and acknowledged."""
    recipient = f"bench_rcv_{uuid.uuid4().hex[:8]}"
    await sdk.register_agent(recipient, "bench")
    child = await Child.start("sdk-handle", dsn, recipient, str(n))
    admin = psqlpy.ConnectionPool(dsn=admin_dsn, max_db_pool_size=2)
    try:
        await child.expect("ready")
        conn = await admin.connection()
        start = time.perf_counter()
        await run_senders(1, n, lambda i: sdk.one_way.send("bench_sender", recipient, {"n": i}))
        await child.expect("done")
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:  # handled is not acknowledged: wait for every ack (read as admin)
            rows = await conn.execute(
                "SELECT count(*) AS n FROM amp.messages m JOIN amp.agents a "
                "ON a.id = m.recipient_id WHERE a.external_id = $1 "
                "AND m.delivery_status = 'delivered'",
                [recipient],
            )
            if rows.result()[0]["n"] >= n:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("not every message was acknowledged")
            await asyncio.sleep(0.005)
        return n / (time.perf_counter() - start)
    finally:
        await child.stop()
        admin.close()


async def sync_p50(dsn: str, sdk: AgentMessaging[Any], n: int) -> float:
    """Median milliseconds of a sync request answered by a handler in another process."""
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
        return statistics.median(samples)
    finally:
        await child.stop()


def server_send_us(dsn: str, n: int) -> float:
    """Microseconds of server time per ``amp.send_one_way``: one statement sends n
    messages, so neither the network nor the client is in the figure."""
    recipient = f"bench_srv_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT amp.register_agent(%s, 'bench')", (recipient,))
        start = time.perf_counter()
        conn.execute(
            "SELECT count(amp.send_one_way('bench_sender', %s, '1')) FROM generate_series(1, %s)",
            (recipient, n),
        )
        return (time.perf_counter() - start) * 1e6 / n


#: every amp function made plain: no SECURITY DEFINER, no pinned search_path (run by
#: a superuser, who needs neither to reach the tables)
PLAIN_FUNCTIONS = """
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid FROM pg_proc p
             WHERE p.pronamespace = 'amp'::regnamespace AND p.prokind = 'f' LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY INVOKER RESET ALL', f);
    END LOOP;
END
$$
"""


async def run(server: str, quick: bool, rounds: int) -> dict[str, Any]:
    n_oneway = 300 if quick else 2000
    n_sync = 100 if quick else 500
    tag = uuid.uuid4().hex[:8]
    group, login = f"bench_org_{tag}", f"bench_app_{tag}"
    databases = {"open": f"amp_bench_open_{tag}", "bound": f"amp_bench_bound_{tag}"}
    plain = f"amp_bench_plain_{tag}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(login)))
        admin.execute(
            sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(login))
        )
        for name in databases.values():
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    results: dict[str, dict[str, list[float]]] = {
        mode: {"oneway_msgs_per_s": [], "sync_p50_ms": [], "server_us_per_send": []}
        for mode in databases
    }
    try:
        for mode, name in databases.items():
            dsn = with_database(server, name)
            await asyncio.to_thread(migrations.upgrade, dsn)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("GRANT amp_user TO {}").format(sql.Identifier(group)))
                conn.execute("SELECT amp.register_organization('bench')")
                conn.execute("SELECT amp.register_agent('bench_sender', 'bench')")
                if mode == "bound":
                    conn.execute("SELECT amp.bind_organization('bench', %s)", (group,))
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(plain), sql.Identifier(databases["open"])
                )
            )
        with psycopg.connect(with_database(server, plain), autocommit=True) as conn:
            conn.execute(PLAIN_FUNCTIONS)
        pin_cost: dict[str, list[float]] = {"pinned": [], "plain": []}
        for _ in range(rounds):
            for mode, name in databases.items():
                admin_dsn = with_database(server, name)
                dsn = as_role(admin_dsn, login)
                config = Config(database_url=dsn, apply_migrations=False)
                async with AgentMessaging[Any](config) as sdk:
                    rate = await oneway(dsn, admin_dsn, sdk, n_oneway)
                    p50 = await sync_p50(dsn, sdk, n_sync)
                cost = await asyncio.to_thread(server_send_us, dsn, 500 if quick else 5000)
                results[mode]["server_us_per_send"].append(round(cost, 1))
                results[mode]["oneway_msgs_per_s"].append(round(rate, 1))
                results[mode]["sync_p50_ms"].append(round(p50, 3))
            n_server = 500 if quick else 5000
            for kind, name in (("pinned", databases["open"]), ("plain", plain)):
                target = with_database(server, name)
                cost = await asyncio.to_thread(server_send_us, target, n_server)
                pin_cost[kind].append(round(cost, 1))
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            for name in [*databases.values(), plain]:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            for role in (login, group):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    best = {
        mode: {
            "oneway_msgs_per_s": max(r["oneway_msgs_per_s"]),
            "sync_p50_ms": min(r["sync_p50_ms"]),
            "server_us_per_send": min(r["server_us_per_send"]),
        }
        for mode, r in results.items()
    }
    return {
        "quick": quick,
        "rounds": results,
        "best": best,
        "pin_cost": {
            "server_us_per_send": pin_cost,
            "pinned_vs_plain": round(min(pin_cost["pinned"]) / min(pin_cost["plain"]), 3),
        },
        "bound_vs_open": {
            "oneway_throughput": round(
                best["bound"]["oneway_msgs_per_s"] / best["open"]["oneway_msgs_per_s"], 3
            ),
            "sync_p50": round(best["bound"]["sync_p50_ms"] / best["open"]["sync_p50_ms"], 3),
            "server_time_per_send": round(
                best["bound"]["server_us_per_send"] / best["open"]["server_us_per_send"], 3
            ),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.security")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    server = asyncio.run(resolve_dsn(Config(database_url=args.database_url)))
    result = asyncio.run(run(server, args.quick, args.rounds))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
