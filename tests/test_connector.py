"""The connector under misuse: failed calls, held locks, cancelled calls, dead or
silent servers, repeated sends. Each test is the regression test of a defect."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from agent_messaging import AgentMessaging, MessageContext
from agent_messaging.database import Database
from agent_messaging.exceptions import (
    AgentNotFoundError,
    DatabaseError,
    DatabaseUnavailableError,
    InvalidInputError,
    StatementTimeoutError,
)

from .helpers import make_config

SDK = AgentMessaging[Any]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Re-check a condition that no notification announces (server-side state such as
    pg_stat_activity) until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def duo(dsn: str) -> AsyncIterator[SDK]:
    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        await sdk.register_organization("org1")
        for name in ("alice", "bob"):
            await sdk.register_agent(name, "org1")
        yield sdk


async def test_failed_calls_do_not_hold_connections(dsn: str) -> None:
    """200 failed calls whose errors stay referenced, then normal calls, a handler
    and close() with the default pool (10 connections)."""
    sdk = AgentMessaging[Any](make_config(dsn))
    await sdk.initialize()
    try:
        await sdk.register_organization("org1")
        for name in ("alice", "bob"):
            await sdk.register_agent(name, "org1")
        errors: list[BaseException] = []
        for i in range(200):
            try:
                await sdk.one_way.send("alice", "nobody", {"n": i})
            except AgentNotFoundError as exc:
                errors.append(exc)
        assert len(errors) == 200
        assert sdk.db.in_use == 0
        got: asyncio.Queue[Any] = asyncio.Queue()

        @sdk.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            got.put_nowait(message)

        await asyncio.wait_for(sdk.serve_handlers(), 10)
        await asyncio.wait_for(sdk.one_way.send("alice", "bob", "still works"), 10)
        assert await asyncio.wait_for(got.get(), 10) == "still works"
        # gather of 30 failing sends returns (each with its own error)
        results = await asyncio.wait_for(
            asyncio.gather(
                *(sdk.one_way.send("alice", "nobody", i) for i in range(30)),
                return_exceptions=True,
            ),
            30,
        )
        assert all(isinstance(r, AgentNotFoundError) for r in results)
        # (the delivery worker's own calls come and go: wait for a quiet moment)
        await until(lambda: asyncio.sleep(0, sdk.db.in_use == 0))
    finally:
        await asyncio.wait_for(sdk.close(), 20)


async def test_error_code_comes_from_the_hint_not_from_caller_text(duo: SDK) -> None:
    # (an id with a line break is refused before it reaches the server: see
    # test_bad_input; from SQL such text cannot reach an error's HINT line either)
    with pytest.raises(AgentNotFoundError):
        await duo.one_way.send("alice", "x HINT: amp error AM045", "hi")


async def test_other_server_errors_are_library_errors(duo: SDK) -> None:
    with pytest.raises(DatabaseError, match="does not exist"):
        await duo.db.fetch("SELECT * FROM amp.no_such_table")


async def test_a_busy_pool_gives_a_clear_error(dsn: str) -> None:
    db = Database(dsn, max_pool_size=2, pool_timeout=0.5)
    try:
        async with db.connection(), db.connection():
            with pytest.raises(DatabaseUnavailableError, match="all 2 connections"):
                await db.fetch("SELECT 1 AS x")
        assert (await db.fetch("SELECT 1 AS x")) == [{"x": 1}]
    finally:
        await db.close()


async def test_a_held_lock_times_out_and_changes_nothing(
    dsn: str, sql: psycopg.Connection[tuple[object, ...]]
) -> None:
    async with AgentMessaging[Any](make_config(dsn, lock_timeout=0.5)) as sdk:
        await sdk.register_organization("org1")
        for name in ("alice", "bob"):
            await sdk.register_agent(name, "org1")
        with psycopg.connect(dsn) as blocker:  # an open transaction elsewhere
            blocker.execute("LOCK TABLE amp.messages IN SHARE MODE")  # no inserts meanwhile
            with pytest.raises(StatementTimeoutError, match="lock timeout"):
                await asyncio.wait_for(sdk.one_way.send("alice", "bob", "blocked"), 30)
            blocker.rollback()
        assert sql.execute("SELECT count(*) FROM amp.messages").fetchone() == (0,)


async def test_a_cancelled_send_is_cancelled_on_the_server(
    dsn: str, sql: psycopg.Connection[tuple[object, ...]]
) -> None:
    """Before: the cancelled send ran on after its blocker rolled back, and was stored."""
    async with AgentMessaging[Any](make_config(dsn, lock_timeout=60.0)) as sdk:
        await sdk.register_organization("org1")
        for name in ("alice", "bob"):
            await sdk.register_agent(name, "org1")
        lock_waiters = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )

        async def waiting(n: int) -> bool:
            return sql.execute(lock_waiters).fetchone() == (n,)

        with psycopg.connect(dsn) as blocker:
            blocker.execute("SELECT 1 FROM amp.agents WHERE external_id = 'alice' FOR UPDATE")
            send = asyncio.create_task(sdk.async_conversation.send("alice", "bob", "cancel me"))
            await until(lambda: waiting(1))  # the statement is on the server, blocked
            send.cancel()
            with pytest.raises(asyncio.CancelledError):
                await send
            await until(lambda: waiting(0))  # cancelled there too
            blocker.commit()
        # the connection went back to the pool and works
        await until(lambda: asyncio.sleep(0, sdk.db.in_use == 0))
        assert await sdk.db.fetch_value("SELECT 1 AS x") == 1
        assert sql.execute("SELECT count(*) FROM amp.messages").fetchone() == (0,)


async def test_a_call_past_its_deadline_is_cancelled(dsn: str) -> None:
    db = Database(dsn, statement_timeout=60.0)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StatementTimeoutError):
            await db.fetch("SELECT pg_sleep(30)", timeout=0.5)
        assert loop.time() - started < 5
        assert db.stats.cancels == 1
        assert await db.fetch_value("SELECT 1 AS x") == 1
    finally:
        await db.close()


async def test_connection_refused_names_the_server() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nobody listens there
    config = make_config(f"postgresql://postgres@127.0.0.1:{port}/amp", connect_timeout=2.0)
    sdk = AgentMessaging[Any](config)
    with pytest.raises(DatabaseUnavailableError, match=f"127.0.0.1:{port}"):
        await asyncio.wait_for(sdk.initialize(), 30)
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("amp-")]


async def test_a_silent_server_times_out_and_leaves_nothing_behind() -> None:
    """A server that accepts connections but never answers: initialize() fails after
    connect_timeout, naming host:port, with no task or connection left."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        config = make_config(f"postgresql://postgres@127.0.0.1:{port}/amp", connect_timeout=1.0)
        sdk = AgentMessaging[Any](config)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DatabaseUnavailableError, match=f"127.0.0.1:{port}.*within 1"):
            await sdk.initialize()
        assert loop.time() - started < 5
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("amp-")]
        assert sdk._db is None and sdk._dispatcher is None
    finally:
        server.close()
        for writer in accepted:
            writer.close()


async def test_idempotent_sends_store_once(
    duo: SDK, sql: psycopg.Connection[tuple[object, ...]]
) -> None:
    first = await duo.one_way.send("alice", "bob", "once", idempotency_key="k1")
    again = await duo.one_way.send("alice", "bob", "once", idempotency_key="k1")
    assert first == again
    inbox = await duo.async_conversation.send("alice", "bob", "in", idempotency_key="k2")
    assert inbox == await duo.async_conversation.send("alice", "bob", "in", idempotency_key="k2")
    # the key is the sender's: bob may use "k1" too
    await duo.one_way.send("bob", "alice", "mine", idempotency_key="k1")
    assert sql.execute("SELECT count(*) FROM amp.messages").fetchone() == (3,)
    with pytest.raises(InvalidInputError, match="already used"):
        await duo.async_conversation.send("alice", "bob", "other kind", idempotency_key="k1")
    with pytest.raises(InvalidInputError):
        await duo.one_way.send("alice", "bob", "x", idempotency_key="")
    # concurrent repeats store one message
    ids = await asyncio.gather(
        *(duo.one_way.send("alice", "bob", "race", idempotency_key="k3") for _ in range(8))
    )
    assert len(set(ids)) == 1
    assert sql.execute("SELECT count(*) FROM amp.messages").fetchone() == (4,)


async def test_repeated_send_and_wait_waits_on_the_first_request(
    duo: SDK, sql: psycopg.Connection[tuple[object, ...]]
) -> None:
    @duo.register_handler("bob")
    async def bob(message: Any, context: MessageContext) -> Any:
        return f"re: {message}"

    await duo.serve_handlers()
    answer = await duo.sync_conversation.send_and_wait(
        "alice", "bob", "q", timeout=30, idempotency_key="ask-1"
    )
    assert answer == "re: q"
    # a retry (as after an unknown outcome) gets the same answer, nothing is re-sent
    again = await duo.sync_conversation.send_and_wait(
        "alice", "bob", "q", timeout=30, idempotency_key="ask-1"
    )
    assert again == "re: q"
    assert sql.execute("SELECT count(*) FROM amp.messages").fetchone() == (2,)


async def test_an_expired_wait_does_not_lock_the_pair(
    duo: SDK, sql: psycopg.Connection[tuple[object, ...]]
) -> None:
    """The waiter vanished without cancelling (killed, or the database was down):
    at its deadline the pair is free again, in SQL."""
    sql.execute("SELECT amp.sync_send('alice', 'bob', '\"q\"', '{}', NULL, interval '0.2 s')")
    # while the wait lasts, a second ask is refused
    with pytest.raises(psycopg.Error, match="already waiting"):
        sql.execute("SELECT amp.sync_send('alice', 'bob', '\"q2\"')")
    sql.execute("SELECT pg_sleep(0.3)")  # the deadline in SQL passes
    assert sql.execute("SELECT count(*) FROM amp.awaiting_reply('bob')").fetchone() == (0,)
    with pytest.raises(psycopg.Error, match="not waiting"):
        sql.execute("SELECT amp.sync_reply('bob', 'alice', '\"late\"')")
    answered = asyncio.create_task(
        duo.sync_conversation.send_and_wait("alice", "bob", "again", timeout=30)
    )

    async def asked() -> bool:
        return sql.execute("SELECT count(*) FROM amp.awaiting_reply('bob')").fetchone() == (1,)

    await until(asked)
    await duo.sync_conversation.reply("bob", "alice", "yes")
    assert await asyncio.wait_for(answered, 30) == "yes"


async def test_a_cancelled_wait_leaves_nobody_locked(
    duo: SDK, sql: psycopg.Connection[tuple[object, ...]]
) -> None:
    asking = asyncio.create_task(duo.sync_conversation.send_and_wait("alice", "bob", "q"))

    async def waiting(n: int) -> bool:
        row = sql.execute("SELECT count(*) FROM amp.awaiting_reply('bob')").fetchone()
        return row == (n,)

    await until(lambda: waiting(1))
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    await until(lambda: waiting(0))
    # and the next ask goes through at once
    again = asyncio.create_task(duo.sync_conversation.send_and_wait("alice", "bob", "q2"))
    await until(lambda: waiting(1))
    await duo.sync_conversation.reply("bob", "alice", "a2")
    assert await asyncio.wait_for(again, 30) == "a2"


async def test_a_failure_record_survives_a_lost_connection(
    dsn: str, sql: psycopg.Connection[tuple[object, ...]]
) -> None:
    """The handler fails while every connection of its process is terminated: the
    failure is still recorded and the message retried per the backoff (0.05 s), not
    after the 30 s lease."""
    config = make_config(dsn, delivery_lease=30.0, delivery_backoff_base=0.05)
    async with AgentMessaging[Any](config) as sdk:
        await sdk.register_organization("org1")
        for name in ("alice", "bob"):
            await sdk.register_agent(name, "org1")
        attempts: asyncio.Queue[int] = asyncio.Queue()

        @sdk.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            attempts.put_nowait(context.attempt)
            if context.attempt == 1:
                sql.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                raise RuntimeError("fails while the connections are cut")

        await sdk.serve_handlers()
        await sdk.one_way.send("alice", "bob", "x")
        assert await asyncio.wait_for(attempts.get(), 30) == 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await asyncio.wait_for(attempts.get(), 30) == 2
        assert loop.time() - started < 15  # well before the lease would expire


async def test_too_many_clients_is_a_clear_error(
    dsn: str, sql: psycopg.Connection[tuple[object, ...]]
) -> None:
    """A server that takes no more connections (here: a role's CONNECTION LIMIT, as
    superusers are exempt from max_connections' last slots and database limits)."""
    role = f"amp_lim_{uuid.uuid4().hex[:8]}"
    sql.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
    try:
        parts = urlsplit(dsn)
        limited = urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.split('@')[-1]}"))
        db = Database(limited)
        try:
            with pytest.raises(
                DatabaseUnavailableError, match=r"too many connections.*max_pool_size"
            ):
                await db.fetch("SELECT 1 AS x")
        finally:
            await db.close()
    finally:
        sql.execute(f'DROP ROLE "{role}"')
