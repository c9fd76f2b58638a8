"""Connections a process holds (issue 17): no listener in a process that only sends,
the listener gone once nobody needs it, a pool that grows under load and shrinks back,
at most two connections in an idle process that serves handlers.

Connections are told apart in ``pg_stat_activity`` by their ``application_name``:
``amp`` (the pool), ``amp-listener``, ``amp-control`` (cancels); each test has its own
database, so ``datname`` confines the count to the processes of the test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from agent_messaging import AgentMessaging
from agent_messaging.database import Database
from agent_messaging.exceptions import StatementTimeoutError

from .helpers import AgentProcess, make_config

SDK = AgentMessaging[Any]
Conn = psycopg.Connection[tuple[object, ...]]


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 30.0) -> None:
    """Re-check server-side state (pg_stat_activity) that nothing announces."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def connections(sql: Conn, application_name: str) -> int:
    """Connections to the test's database with that application_name."""
    row = sql.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = %s",
        [application_name],
    ).fetchone()
    assert row is not None
    return int(row[0])


async def setup(sdk: SDK, *names: str) -> None:
    await sdk.register_organization("org1")
    for name in names:
        await sdk.register_agent(name, "org1")


async def test_a_send_only_process_holds_no_listener(dsn: str, sql: Conn) -> None:
    async with AgentMessaging[Any](make_config(dsn, application_name="tester")) as sdk:
        await setup(sdk, "alice", "bob")
        sender = await AgentProcess.start(dsn, "send", "alice", "bob", "3", "--stay")
        try:
            await sender.expect("sent")
            # it sent (one-way messages are pending for bob) and stays connected
            assert connections(sql, "amp") >= 1
            assert connections(sql, "amp-listener") == 0
            assert connections(sql, "amp-control") == 0
        finally:
            await sender.stop()
        # the count can see a listener: a process that waits holds one
        waiter = await AgentProcess.start(dsn, "wait", "bob", "alice", "--timeout", "60")
        try:
            await waiter.expect("waiting")
            await until(lambda: connections(sql, "amp-listener") == 1)
            await sdk.async_conversation.send("alice", "bob", {"n": 1})
            assert (await waiter.expect("got"))["content"] == {"n": 1}
        finally:
            await waiter.stop()
        # and this SDK, which only sent and registered, never listened
        assert not sdk.dispatcher.listening
        assert connections(sql, "tester-listener") == 0


async def test_the_listener_goes_when_nobody_needs_it(dsn: str, sql: Conn) -> None:
    config = make_config(dsn, listener_linger=0.2)
    async with AgentMessaging[Any](config) as sdk:
        await setup(sdk, "alice", "bob")
        assert not sdk.dispatcher.listening
        waiting = asyncio.create_task(sdk.async_conversation.wait_for_message("bob", None, 60))
        await until(lambda: connections(sql, "amp-listener") == 1)
        await sdk.async_conversation.send("alice", "bob", "hi")
        assert await asyncio.wait_for(waiting, 30) == "hi"
        await until(lambda: connections(sql, "amp-listener") == 0)
        assert not sdk.dispatcher.listening
        # it comes back for the next waiter, and a message it missed is still read
        await sdk.async_conversation.send("alice", "bob", "while nobody listened")
        got = await sdk.async_conversation.wait_for_message("bob", None, 30)
        assert got == "while nobody listened"


async def test_back_to_back_waits_share_the_listener(dsn: str) -> None:
    config = make_config(dsn, listener_linger=60.0)
    async with AgentMessaging[Any](config) as sdk:
        await setup(sdk, "alice", "bob")
        pids = []
        for n in range(3):
            waiting = asyncio.create_task(sdk.async_conversation.wait_for_message("bob", None, 60))
            await sdk.async_conversation.send("alice", "bob", n)
            assert await asyncio.wait_for(waiting, 30) == n
            pids.append(await sdk.dispatcher.backend_pid())
        assert pids[0] is not None and len(set(pids)) == 1
        assert sdk.dispatcher.reconnects == 0


async def test_the_pool_grows_under_load_and_shrinks_back(dsn: str, sql: Conn) -> None:
    db = Database(dsn, min_pool_size=1, idle_timeout=0.3)
    try:
        assert await db.fetch_value("SELECT 1 AS x") == 1
        assert db.size == 1
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(4):
                await stack.enter_async_context(db.connection())
            assert db.size == 4
            assert connections(sql, "amp") == 4
        await until(lambda: connections(sql, "amp") == 1)
        assert db.size == 1
        # calls one after another need one connection
        for _ in range(20):
            await db.fetch_value("SELECT 1 AS x")
        assert db.size == 1
    finally:
        await db.close()
    db = Database(dsn, min_pool_size=0, idle_timeout=0.3)
    try:
        await db.fetch_value("SELECT 1 AS x")
        await until(lambda: connections(sql, "amp") == 0)
        assert db.size == 0
        assert await db.fetch_value("SELECT 2 AS x") == 2  # opened again on demand
    finally:
        await db.close()


async def test_the_control_connection_is_opened_on_demand_and_closed_idle(
    dsn: str, sql: Conn
) -> None:
    db = Database(dsn, statement_timeout=60.0, idle_timeout=1.0)
    try:
        await db.fetch_value("SELECT 1 AS x")
        assert connections(sql, "amp-control") == 0
        with contextlib.suppress(StatementTimeoutError):
            await db.fetch("SELECT pg_sleep(30)", timeout=0.3)
        assert db.stats.cancels == 1
        await until(lambda: connections(sql, "amp-control") == 1)
        await until(lambda: connections(sql, "amp-control") == 0)
        assert await db.fetch_value("SELECT 1 AS x") == 1
    finally:
        await db.close()


async def test_an_idle_serving_process_holds_two_connections(dsn: str, sql: Conn) -> None:
    async with AgentMessaging[Any](make_config(dsn, application_name="tester")) as sdk:
        await setup(sdk, "alice", "bob")
        server = await AgentProcess.start(
            dsn, "--idle-timeout", "0.3", "--concurrency", "32", "handle", "bob"
        )
        try:
            await server.expect("ready")
            # load: a burst of messages handled concurrently
            peak = 0
            ids = await sdk.one_way.send_many("alice", [("bob", {"n": i}) for i in range(200)])
            handled = 0
            while handled < len(ids):
                await server.expect("handled")
                handled += 1
                peak = max(peak, connections(sql, "amp") + connections(sql, "amp-listener"))
            print(f"connections of the serving process under load: up to {peak} (sampled)")

            def held() -> int:
                names = ("amp", "amp-listener", "amp-control")
                return sum(connections(sql, name) for name in names)

            def heartbeat() -> object:
                return sql.execute("SELECT heartbeat_at FROM amp.workers").fetchone()

            await until(lambda: held() <= 2)
            # idle but alive: heartbeats and turn sweeps keep running, on one connection
            for _ in range(3):
                last = heartbeat()
                await until(lambda last=last: heartbeat() != last)
            assert held() <= 2
            assert connections(sql, "amp-listener") == 1
            # and it still serves
            await sdk.one_way.send("alice", "bob", {"n": "after"})
            assert (await server.expect("handled"))["content"] == {"n": "after"}
        finally:
            await server.stop()
