"""Transactional sends (issue 13 item 7): the application's SQL and SDK sends in one
transaction. A rollback sends nothing; the commit makes rows, messages and their
notifications visible together, to a handler in another process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from agent_messaging import AgentMessaging, TransactionError
from agent_messaging.dispatcher import AnyNotification
from agent_messaging.exceptions import AgentNotFoundError
from agent_messaging.notifications import MessageStored

from .helpers import AgentProcess, make_config

SDK = AgentMessaging[Any]
Conn = psycopg.Connection[tuple[object, ...]]


class Boom(Exception):
    """The application's own failure inside the block."""


@pytest.fixture
async def shop(dsn: str, sql: Conn) -> AsyncIterator[SDK]:
    """An SDK with agents alice and bob and an application table ``orders``."""
    sql.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        await sdk.register_organization("org1")
        for name in ("alice", "bob"):
            await sdk.register_agent(name, "org1")
        yield sdk


def scalar(sql: Conn, query: str, params: list[Any] | None = None) -> Any:
    row = sql.execute(query, params).fetchone()
    assert row is not None
    return row[0]


async def test_rollback_sends_nothing_and_commit_delivers_across_processes(
    dsn: str, shop: SDK, sql: Conn
) -> None:
    sdk = shop
    bob = await AgentProcess.start(dsn, "handle", "bob")
    try:
        await bob.expect("ready")
        # a listener of this test's own on bob's channel, to see when the hints come
        hints: asyncio.Queue[AnyNotification] = asyncio.Queue()
        channel = await sdk.agent_channel("bob")
        await sdk.dispatcher.subscribe([channel], lambda _c, n: hints.put_nowait(n))

        with pytest.raises(Boom):
            async with sdk.transaction() as tx:
                await tx.execute("INSERT INTO orders VALUES ($1, $2)", [1, "rolled back"])
                await tx.one_way.send("alice", "bob", {"n": "rolled back"})
                await tx.one_way.broadcast("alice", ["bob"], {"n": "rolled back too"})
                raise Boom
        assert scalar(sql, "SELECT count(*) FROM orders") == 0
        assert scalar(sql, "SELECT count(*) FROM amp.messages") == 0

        async with sdk.transaction() as tx:
            await tx.execute("INSERT INTO orders VALUES ($1, $2)", [2, "committed"])
            message_id = await tx.one_way.send("alice", "bob", {"n": "committed"})
            assert await tx.fetch_value("SELECT count(*) AS n FROM amp.messages") == 1
            # not visible outside before the commit: neither the row nor the message
            assert scalar(sql, "SELECT count(*) FROM orders") == 0
            assert scalar(sql, "SELECT count(*) FROM amp.messages") == 0
            # nor its hint: a NOTIFY committed after the send overtakes it
            sql.execute("SELECT pg_notify(%s, %s)", [channel, '{"kind":"barrier"}'])
            assert (await asyncio.wait_for(hints.get(), 30)).kind == "barrier"
            assert hints.empty()
        # committed together: the row, the message, its hint, the delivery
        assert scalar(sql, "SELECT note FROM orders") == "committed"
        hint = await asyncio.wait_for(hints.get(), 30)
        assert isinstance(hint, MessageStored) and hint.message_id == message_id
        handled = await bob.expect("handled")
        assert handled["content"] == {"n": "committed"}
        # and only the committed message: one sent afterwards is the next one handled
        await sdk.one_way.send("alice", "bob", {"n": "after"})
        assert (await bob.expect("handled"))["content"] == {"n": "after"}
        contents = [e["content"] for e in bob.events if e["event"] == "handled"]
        assert contents == [{"n": "committed"}, {"n": "after"}]
        assert sdk.db.in_use == 0
    finally:
        await bob.stop()


async def test_inbox_reads_in_a_transaction_roll_back(shop: SDK) -> None:
    sdk = shop
    await sdk.async_conversation.send("alice", "bob", "task")
    with pytest.raises(Boom):
        async with sdk.transaction() as tx:
            assert await tx.async_conversation.get_unread_messages("bob") == ["task"]
            raise Boom  # processing failed: the message is unread again
    async with sdk.transaction() as tx:
        assert await tx.async_conversation.get_unread_messages("bob") == ["task"]
        await tx.async_conversation.send("bob", "alice", "done")
    assert await sdk.async_conversation.get_unread_messages("bob") == []
    assert await sdk.async_conversation.get_unread_messages("alice") == ["done"]


async def test_a_reply_in_a_transaction_arrives_at_the_commit(shop: SDK, sql: Conn) -> None:
    sdk = shop
    asking = asyncio.create_task(sdk.sync_conversation.send_and_wait("alice", "bob", "q", 60))
    hints: asyncio.Queue[AnyNotification] = asyncio.Queue()
    await sdk.dispatcher.subscribe(
        [await sdk.agent_channel("bob")], lambda _c, n: hints.put_nowait(n)
    )
    while scalar(sql, "SELECT count(*) FROM amp.awaiting_reply('bob')") == 0:
        await asyncio.wait_for(hints.get(), 30)  # the request's hint
    async with sdk.transaction() as tx:
        await tx.sync_conversation.reply("bob", "alice", "a")
        assert not asking.done()
        with pytest.raises(TransactionError, match="send_and_wait cannot run inside"):
            await tx.sync_conversation.send_and_wait("bob", "alice", "q2")
    assert await asyncio.wait_for(asking, 30) == "a"


async def test_a_failed_statement_rolls_the_whole_transaction_back(shop: SDK, sql: Conn) -> None:
    sdk = shop
    # an amp error leaving the block: rolled back, the error is the block's
    with pytest.raises(AgentNotFoundError):
        async with sdk.transaction() as tx:
            await tx.execute("INSERT INTO orders VALUES (1, 'x')")
            await tx.one_way.send("alice", "nobody", "x")
    # an error caught inside the block: the commit is refused, nothing is kept
    with pytest.raises(TransactionError, match="rolled back, not committed"):
        async with sdk.transaction() as tx:
            await tx.execute("INSERT INTO orders VALUES (2, 'x')")
            await tx.one_way.send("alice", "bob", "x")
            with pytest.raises(AgentNotFoundError):
                await tx.one_way.send("alice", "nobody", "x")
            with pytest.raises(TransactionError, match="aborted"):
                await tx.execute("INSERT INTO orders VALUES (3, 'x')")
    assert scalar(sql, "SELECT count(*) FROM orders") == 0
    assert scalar(sql, "SELECT count(*) FROM amp.messages") == 0
    # a transaction is not usable after its block, and its connection is back
    with pytest.raises(TransactionError, match="over"):
        await tx.execute("SELECT 1")
    assert sdk.db.in_use == 0
    async with sdk.transaction() as tx:
        await tx.execute("INSERT INTO orders VALUES (4, 'x')")
    assert scalar(sql, "SELECT count(*) FROM orders") == 1


async def test_a_cancelled_transaction_is_rolled_back(shop: SDK, sql: Conn) -> None:
    sdk = shop
    inside = asyncio.Event()

    async def work() -> None:
        async with sdk.transaction() as tx:
            await tx.execute("INSERT INTO orders VALUES (1, 'x')")
            await tx.one_way.send("alice", "bob", "x")
            inside.set()
            await tx.execute("SELECT pg_sleep(60)")

    task = asyncio.create_task(work())
    await asyncio.wait_for(inside.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert scalar(sql, "SELECT count(*) FROM orders") == 0
    assert scalar(sql, "SELECT count(*) FROM amp.messages") == 0
    # the pool is usable, and no statement of the transaction runs on
    assert await sdk.db.fetch_value("SELECT 1 AS x") == 1
    running = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while scalar(sql, running) != 0:  # cancelled on the server, then the connection closed
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
