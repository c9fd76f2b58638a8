"""Asynchronous conversations: the inbox, waiting, concurrent readers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent_messaging import (
    AgentMessaging,
    AgentNotFoundError,
    HandlerExecutionError,
    HandlerNotRegisteredError,
    InvalidInputError,
    MessageContext,
)

from .helpers import AgentProcess, make_config, psql

SDK = AgentMessaging[Any]


@pytest.fixture
def pair(trio: SDK) -> SDK:
    return trio


async def test_send_then_read_oldest_first_and_marked_read(pair: SDK) -> None:
    for i in range(3):
        await pair.async_conversation.send("alice", "bob", {"n": i})
    await pair.async_conversation.send("carol", "bob", "from carol")
    inbox = await pair.db.fetch("SELECT agent, unread FROM amp.agent_inbox")
    assert inbox == [{"agent": "bob", "unread": 4}]
    assert await pair.async_conversation.get_unread_messages("bob") == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
        "from carol",
    ]
    assert await pair.async_conversation.get_unread_messages("bob") == []
    assert await pair.db.fetch("SELECT * FROM amp.agent_inbox") == []


async def test_messages_from_one_agent_peek_or_take(pair: SDK) -> None:
    await pair.async_conversation.send("alice", "bob", "a1")
    await pair.async_conversation.send("carol", "bob", "c1")
    await pair.async_conversation.send("alice", "bob", "a2")
    peek = await pair.async_conversation.get_messages_from_agent("bob", "alice", mark_read=False)
    assert peek == ["a1", "a2"]
    assert await pair.async_conversation.get_messages_from_agent("bob", "alice") == ["a1", "a2"]
    assert await pair.async_conversation.get_messages_from_agent("bob", "alice") == []
    assert await pair.async_conversation.get_unread_messages("bob") == ["c1"]


async def test_one_session_per_pair(pair: SDK) -> None:
    await pair.async_conversation.send("alice", "bob", 1)
    await pair.async_conversation.send("bob", "alice", 2)
    sessions = await pair.db.fetch(
        "SELECT session_type, agent_a, agent_b, messages FROM amp.active_conversations"
    )
    assert len(sessions) == 1 and sessions[0]["messages"] == 2


async def test_wait_for_message_woken_by_another_process(pair: SDK, dsn: str) -> None:
    """The waiter polls only every 60 s: only the NOTIFY can wake it in time."""
    async with AgentMessaging[Any](make_config(dsn, poll_interval=60.0)) as waiter:
        waiting = asyncio.create_task(
            waiter.async_conversation.wait_for_message("bob", "alice", timeout=30)
        )
        sender = await AgentProcess.start(dsn, "send", "alice", "bob", "1", "--kind", "async")
        try:
            await sender.expect("sent")
        finally:
            await sender.stop()
        assert await asyncio.wait_for(waiting, 30) == {"n": 0}


async def test_wait_for_message_in_another_process_woken_from_psql(pair: SDK, dsn: str) -> None:
    waiter = await AgentProcess.start(dsn, "--poll", "60", "wait", "bob", "alice")
    try:
        await waiter.expect("waiting")
        psql(dsn, """SELECT amp.async_send('alice', 'bob', '{"from": "psql"}');""")
        got = await waiter.expect("got")
    finally:
        await waiter.stop()
    assert got["content"] == {"from": "psql"}


async def test_wait_for_message_ignores_other_senders_and_times_out(pair: SDK) -> None:
    await pair.async_conversation.send("carol", "bob", "not from alice")
    assert await pair.async_conversation.wait_for_message("bob", "alice", timeout=0.3) is None
    assert await pair.async_conversation.get_unread_messages("bob") == ["not from alice"]


async def test_concurrent_readers_in_two_processes_never_overlap(pair: SDK, dsn: str) -> None:
    for i in range(200):
        await pair.async_conversation.send("alice", "bob", i)
    readers = [await AgentProcess.start(dsn, "read", "bob") for _ in range(2)]
    try:
        for reader in readers:
            await reader.expect("ready")
        await pair.db.execute("SELECT pg_notify('amp_test_go', '{}')")
        results = [set((await reader.expect("read"))["contents"]) for reader in readers]
    finally:
        for reader in readers:
            await reader.stop()
    assert results[0].isdisjoint(results[1])
    assert results[0] | results[1] == set(range(200))


async def test_concurrent_readers_in_one_process_never_overlap(pair: SDK) -> None:
    for i in range(100):
        await pair.async_conversation.send("alice", "bob", i)

    async def reader() -> list[int]:
        got: list[int] = []
        while batch := await pair.async_conversation.get_unread_messages("bob", limit=1):
            got += batch
        return got

    results = await asyncio.gather(*(reader() for _ in range(6)))
    flat = [n for r in results for n in r]
    assert sorted(flat) == list(range(100))


async def test_resume_agent_handler(pair: SDK) -> None:
    seen: list[tuple[Any, str]] = []

    @pair.register_handler("bob")
    async def on_message(message: Any, context: MessageContext) -> None:
        seen.append((message, context.sender_external_id))

    await pair.serve_handlers()
    await pair.async_conversation.send("alice", "bob", "one")
    await pair.async_conversation.send("carol", "bob", "two")
    assert await pair.async_conversation.resume_agent_handler("bob") == 2
    assert seen == [("one", "alice"), ("two", "carol")]
    with pytest.raises(HandlerNotRegisteredError):
        await pair.async_conversation.resume_agent_handler("carol")


async def test_resume_with_failing_handler_keeps_the_message(pair: SDK) -> None:
    @pair.register_handler("bob")
    async def broken(message: Any, context: MessageContext) -> None:
        raise RuntimeError("no")

    await pair.serve_handlers()
    await pair.async_conversation.send("alice", "bob", "keep me")
    with pytest.raises(HandlerExecutionError):
        await pair.async_conversation.resume_agent_handler("bob")
    assert await pair.async_conversation.get_unread_messages("bob") == ["keep me"]


async def test_async_messages_are_not_pushed_to_handlers(pair: SDK) -> None:
    pushed: list[Any] = []

    @pair.register_handler("bob")
    async def on_message(message: Any, context: MessageContext) -> None:
        pushed.append(message)

    await pair.serve_handlers()
    await pair.async_conversation.send("alice", "bob", "pull me")
    one_way = await pair.one_way.send("alice", "bob", "push me")
    from .helpers import wait_delivered

    await wait_delivered(pair, "alice", [one_way])
    assert pushed == ["push me"]


async def test_bad_input_raises_and_stores_nothing(pair: SDK) -> None:
    conv = pair.async_conversation
    with pytest.raises(AgentNotFoundError):
        await conv.send("alice", "nobody", 1)
    with pytest.raises(InvalidInputError):
        await conv.send("alice", "", 1)
    with pytest.raises(InvalidInputError, match="itself"):
        await conv.send("bob", "bob", 1)
    with pytest.raises(InvalidInputError):
        await conv.send("alice", "bob", {1, 2, object()})
    with pytest.raises(AgentNotFoundError):
        await conv.get_unread_messages("nobody")
    with pytest.raises(AgentNotFoundError):
        await conv.wait_for_message("bob", "nobody", timeout=0.1)
    assert await pair.db.fetch_value("SELECT count(*) FROM amp.messages") == 0
    assert await pair.db.fetch_value("SELECT count(*) FROM amp.sessions") == 0
