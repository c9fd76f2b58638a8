"""The listener fan-out cliff: notifying commits/s with 0, 50, 90 idle LISTEN connections.

``python -m bench.listeners [--database-url URL] [--seconds 8] [--clients 4] [--idle 0,50,90]``

PostgreSQL up to 18 signals every backend that LISTENs in the database on each
notifying commit, whatever the channel. Here ``clients`` connections each run
``INSERT`` into a scratch table whose ``AFTER INSERT`` trigger calls ``pg_notify`` on
one channel (a notifying commit per statement), for ``seconds``, while K other
connections sit idle, each LISTENing on a channel of its own. Creates and drops a
scratch database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from typing import Any

import psqlpy
import psycopg

from agent_messaging import Config
from agent_messaging.database import resolve_dsn

SETUP = """
CREATE TABLE fanout (id bigserial PRIMARY KEY, body text);
CREATE FUNCTION fanout_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fanout_hot', NEW.id::text);
    RETURN NEW;
END $$;
CREATE TRIGGER fanout_notify AFTER INSERT ON fanout FOR EACH ROW EXECUTE FUNCTION fanout_notify();
"""


async def notifying_commits(dsn: str, clients: int, seconds: float) -> float:
    pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=clients + 1)
    count = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal count
        conn = await pool.connection()
        while time.perf_counter() < stop:
            await conn.execute("INSERT INTO fanout (body) VALUES ($1)", ["x"])
            count += 1

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    pool.close()
    return count / elapsed


def idle_listeners(dsn: str, k: int) -> list[psycopg.Connection[Any]]:
    conns = []
    for i in range(k):
        conn = psycopg.connect(dsn, autocommit=True)
        conn.execute(f"LISTEN fanout_idle_{i}")  # i is an int: no injection
        conns.append(conn)
    return conns


async def run(server: str, idle: list[int], clients: int, seconds: float) -> dict[str, Any]:
    from bench.common import with_database

    name = f"amp_bench_fanout_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        version = admin.execute("SHOW server_version").fetchone()
    dsn = with_database(server, name)
    figures: dict[str, Any] = {}
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SETUP)
        for k in idle:
            conns = await asyncio.to_thread(idle_listeners, dsn, k)
            try:
                rates = [await notifying_commits(dsn, clients, seconds) for _ in range(2)]
            finally:
                for conn in conns:
                    conn.close()
            figures[str(k)] = [round(r) for r in rates]
            print(f"{k:>3} idle listeners: {' / '.join(f'{r:,.0f}' for r in rates)} commits/s")
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return {
        "server_version": version[0] if version else None,
        "clients": clients,
        "seconds": seconds,
        "notifying_commits_per_s_by_idle_listeners": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.listeners")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--idle", default="0,50,90")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    server = args.database_url or os.environ.get("AMP_DATABASE_URL")
    if not server:
        server = asyncio.run(resolve_dsn(Config()))
    idle = [int(x) for x in args.idle.split(",")]
    result = asyncio.run(run(server, idle, args.clients, args.seconds))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
