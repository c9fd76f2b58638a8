"""Many SDK processes on one server (issue #17): one-way throughput, the sync round
trip and the notifying-commit ceiling with 1, 10 and 50 SDK processes attached.

An attached process is ``bench.worker idle``: an SDK process with default settings
serving one agent that is sent nothing (its listener, heartbeat and polls are all it
does). With ``share`` (the SDK's default, ``share_listener``, :mod:`agent_messaging.hub`)
every SDK process of the section, attached or measuring, shares the host's LISTEN
connection; without it (``AMP_SHARE_LISTENER=0``) each has one of its own.
PostgreSQL up to 18 signals every listening backend of a database on each notifying
commit, whatever the channel, so attached listeners tax every send.

The ceiling is pgbench-like: 4 clients committing ``INSERT`` into a table whose
``AFTER INSERT`` trigger calls ``pg_notify`` on a channel nobody listens on, for a
few seconds; ``pgbench`` when it is installed, else the same loop from psqlpy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psqlpy
import psycopg

from agent_messaging import AgentMessaging, Config
from bench.basics import oneway_sdk, sync_sdk
from bench.common import Child, latency, with_database

CEILING_CLIENTS = 4
#: connections kept free for the bench itself and the other processes it starts
HEADROOM = 12

SETUP = """
CREATE TABLE IF NOT EXISTS bench_notify (id bigserial PRIMARY KEY, body text);
CREATE OR REPLACE FUNCTION bench_notify_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_ceiling', NEW.id::text);
    RETURN NEW;
END;
$$;
DROP TRIGGER IF EXISTS bench_notify_after_insert ON bench_notify;
CREATE TRIGGER bench_notify_after_insert AFTER INSERT ON bench_notify
    FOR EACH ROW EXECUTE FUNCTION bench_notify_trigger();
"""
INSERT = "INSERT INTO bench_notify (body) VALUES ('x');"


async def ceiling(dsn: str, seconds: float) -> dict[str, Any]:
    """Notifying commits per second from CEILING_CLIENTS clients."""
    pgbench = shutil.which("pgbench")
    if pgbench is not None:
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "insert.sql"
            script.write_text(INSERT + "\n")
            proc = await asyncio.create_subprocess_exec(
                pgbench,
                "-n",
                "-c",
                str(CEILING_CLIENTS),
                "-j",
                "2",
                "-T",
                str(max(1, round(seconds))),
                "-f",
                str(script),
                dsn,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
        found = re.search(r"tps = ([0-9.]+)", out.decode())
        if proc.returncode != 0 or found is None:
            raise RuntimeError(f"pgbench failed: {err.decode()[-1000:]}")
        return {"commits_per_s": round(float(found.group(1)), 1), "method": "pgbench"}
    pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=CEILING_CLIENTS)
    try:
        deadline = time.perf_counter() + seconds
        counts = [0] * CEILING_CLIENTS

        async def client(k: int) -> None:
            conn = await pool.connection()
            while time.perf_counter() < deadline:
                await conn.execute(INSERT)
                counts[k] += 1

        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(CEILING_CLIENTS)))
        rate = sum(counts) / (time.perf_counter() - start)
    finally:
        pool.close()
    return {"commits_per_s": round(rate, 1), "method": "psqlpy loop"}


async def free_connections(sdk: AgentMessaging[Any]) -> tuple[int, int]:
    """(connection slots still free for ordinary roles, max_connections)."""
    row = await sdk.db.fetch_one(
        "SELECT current_setting('max_connections')::int AS max,"
        " current_setting('superuser_reserved_connections')::int AS reserved,"
        " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int"
        " AS used"
    )
    return row["max"] - row["reserved"] - row["used"], row["max"]


@contextlib.contextmanager
def sharing(share: bool) -> Iterator[None]:
    """Processes started in the block share their listener (the default), or not."""
    saved = os.environ.get("AMP_SHARE_LISTENER")
    os.environ["AMP_SHARE_LISTENER"] = "1" if share else "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("AMP_SHARE_LISTENER", None)
        else:
            os.environ["AMP_SHARE_LISTENER"] = saved


async def attached_processes(
    server: str,
    database: str,
    counts: list[int],
    n_oneway: int,
    n_sync: int,
    seconds: float,
    share: bool = True,
) -> dict[str, Any]:
    """For each count K: K idle SDK processes attached, then the three figures;
    ``share``: every SDK process of the section (this one's too) shares the host's
    listener, as by default; else each has one of its own."""
    config = Config(database_url=with_database(server, database), apply_migrations=False)
    async with AgentMessaging[Any](config.model_copy(update={"share_listener": share})) as sdk:
        with sharing(share):
            return await _attached(server, database, sdk, counts, n_oneway, n_sync, seconds, share)


async def _attached(
    server: str,
    database: str,
    sdk: AgentMessaging[Any],
    counts: list[int],
    n_oneway: int,
    n_sync: int,
    seconds: float,
    share: bool,
) -> dict[str, Any]:
    dsn = with_database(server, database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SETUP)
    app = f"amp_bench_attached_{uuid.uuid4().hex[:8]}"
    attached_dsn = with_database(server, database, app)
    children: list[Child] = []
    rows: dict[str, Any] = {}
    try:
        rows["0"] = {"ceiling": await ceiling(dsn, seconds)}
        per_process = 3.0  # until measured with the first attached process
        for k in counts:
            free, max_connections = await free_connections(sdk)
            needed = round((k - len(children)) * per_process)
            if needed > free - HEADROOM:
                rows[str(k)] = {
                    "skipped": f"needs about {needed} more connections"
                    f" ({per_process:.1f} per SDK process), {free} free of"
                    f" max_connections={max_connections}"
                }
                continue
            agents = [f"bench_idle_{app[-8:]}_{i}" for i in range(len(children), k)]
            for agent in agents:
                await sdk.register_agent(agent, "bench")
            fresh = await asyncio.gather(*(Child.start("idle", attached_dsn, a) for a in agents))
            children.extend(fresh)
            await asyncio.gather(*(c.expect("ready", 300) for c in fresh))
            connections = await sdk.db.fetch_value(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1", [app + "%"]
            )
            # every LISTEN connection of the database (a shared one may belong to
            # any process of the host)
            listeners = await sdk.db.fetch_value(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name LIKE '%-listener'"
            )
            per_process = max(1.0, connections / len(children))
            rows[str(k)] = {
                "connections": int(connections),
                "listeners": int(listeners),
                "ceiling": await ceiling(dsn, seconds),
                "oneway_msgs_per_s": round(await oneway_sdk(dsn, sdk, n_oneway, 1), 1),
                "sync": latency(await sync_sdk(dsn, sdk, n_sync)),
            }
    finally:
        await asyncio.gather(*(c.stop() for c in children))
    measured = [int(k) for k, row in rows.items() if "oneway_msgs_per_s" in row]
    summary: dict[str, Any] = {
        "n_oneway": n_oneway,
        "n_sync": n_sync,
        "share_listener": share,
        "by_processes": rows,
    }
    if len(measured) > 1:
        first, last = str(min(measured)), str(max(measured))
        summary["oneway_ratio_most_vs_1"] = round(
            rows[last]["oneway_msgs_per_s"] / rows[first]["oneway_msgs_per_s"], 3
        )
    return summary
