"""A busy hub: does CPU-bound handler code in the process that holds the host's shared
listener delay the other processes' notifications?

``python -m bench.busy_hub [--database-url URL] [--burn-ms 200] [-n 40] [--share on|off|both]``

Three processes share one listener (``share_listener``, in a private socket directory):
the *burner* starts first, so it is the one that LISTENs for the host (the hub in
that configuration); its handler burns ``burn-ms`` of CPU per message (pure Python,
holding its event loop). A *replier* process answers sync requests at once, and this
process asks it (``send_and_wait``) ``n`` times, first while the burner is idle, then
while it is kept busy (one-way messages to it, sent as fast as it burns them, with a
backlog). Printed: the sync round trip p50 / p95 / max per phase. With ``--share off``
every process has a listener of its own (the control). Creates and drops a scratch
database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from typing import Any

import psycopg

from agent_messaging import AgentMessaging, Config, migrations
from agent_messaging.database import resolve_dsn
from bench.common import Child, latency, with_database


async def round_trips(sdk: AgentMessaging[Any], recipient: str, n: int) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        await sdk.sync_conversation.send_and_wait("asker", recipient, {"n": i}, 60)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def figures(samples: list[float]) -> dict[str, float]:
    return {**latency(samples), "max_ms": round(max(samples), 3), "n": len(samples)}


async def one_run(dsn: str, share: bool, burn_ms: float, n: int) -> dict[str, Any]:
    socket_dir = tempfile.mkdtemp(prefix="amp-busy-hub-")
    os.environ["AMP_SHARE_LISTENER"] = "1" if share else "0"
    os.environ["AMP_LISTENER_SOCKET_DIR"] = socket_dir
    burner = replier = None
    result: dict[str, Any] = {"share_listener": share, "burn_ms": burn_ms}
    try:
        burner = await Child.start("burn", dsn, "burner", str(burn_ms))
        result["burner_role"] = (await burner.expect("ready"))["role"]
        replier = await Child.start("sdk-handle", dsn, "replier", str(10**9))
        await replier.expect("ready")
        config = Config(database_url=dsn, apply_migrations=False)
        async with AgentMessaging[Any](config) as sdk:
            await sdk.sync_conversation.send_and_wait("asker", "replier", {"warm": 1}, 60)
            result["asker_role"] = sdk.dispatcher.listener_role
            result["idle"] = figures(await round_trips(sdk, "replier", n))

            stop = asyncio.Event()

            async def keep_busy() -> None:
                for _ in range(5):  # a backlog: the burner never runs dry
                    await sdk.one_way.send("asker", "burner", {"burn": True})
                while not stop.is_set():
                    await sdk.one_way.send("asker", "burner", {"burn": True})
                    await asyncio.sleep(burn_ms / 1000)

            feeder = asyncio.create_task(keep_busy())
            await asyncio.sleep(3 * burn_ms / 1000)  # the burner is burning
            try:
                result["busy"] = figures(await round_trips(sdk, "replier", n))
            finally:
                stop.set()
                await feeder
    finally:
        for child in (burner, replier):
            if child is not None:
                await child.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)
    return result


async def run(server: str, burn_ms: float, n: int, modes: list[bool]) -> list[dict[str, Any]]:
    database = f"amp_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    dsn = with_database(server, database)
    try:
        await asyncio.to_thread(migrations.upgrade, dsn)
        async with AgentMessaging[Any](Config(database_url=dsn, apply_migrations=False)) as sdk:
            await sdk.register_organization("bench", "Bench")
            for name in ("asker", "replier", "burner"):
                await sdk.register_agent(name, "bench")
        return [await one_run(dsn, share, burn_ms, n) for share in modes]
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.busy_hub")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--burn-ms", type=float, default=200.0)
    parser.add_argument("-n", type=int, default=40, help="sync round trips per phase")
    parser.add_argument("--share", choices=["on", "off", "both"], default="both")
    args = parser.parse_args()
    server = args.database_url or os.environ.get("AMP_DATABASE_URL")
    if not server:
        server = asyncio.run(resolve_dsn(Config()))
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.share]
    results = asyncio.run(run(server, args.burn_ms, args.n, modes))
    for r in results:
        print(json.dumps(r))
    for r in results:
        how = "shared listener" if r["share_listener"] else "own listeners"
        for phase in ("idle", "busy"):
            f = r[phase]
            print(
                f"{how:16} burner {r['burner_role'] or '-':6} asker {r['asker_role'] or '-':6}"
                f" burner {phase}: sync p50 {f['p50_ms']:.2f} p95 {f['p95_ms']:.2f}"
                f" max {f['max_ms']:.2f} ms (n={f['n']})"
            )


if __name__ == "__main__":
    main()
