"""Synchronous conversations across processes and languages."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID

import pytest

from agent_messaging import (
    AgentMessaging,
    AgentNotFoundError,
    ConversationEndedError,
    ConversationTimeoutError,
    InvalidInputError,
    InvalidSessionStateError,
    MessageContext,
    SessionNotFoundError,
)

from .helpers import AgentProcess, PsqlSession, make_config, wait_delivered, wait_for_notification

SDK = AgentMessaging[Any]


@pytest.fixture
def pair(trio: SDK) -> SDK:
    return trio


async def session_state(sdk: SDK) -> list[dict[str, Any]]:
    return await sdk.db.fetch(
        "SELECT status, locked_agent_id, waiting_for FROM amp.sessions WHERE session_type = 'sync'"
    )


async def request_for(sdk: SDK, agent: str) -> dict[str, Any] | None:
    """Wait until a request awaits ``agent``'s reply (listen, check, wait)."""

    async def check() -> dict[str, Any] | None:
        rows = await sdk.db.fetch("SELECT * FROM amp.awaiting_reply($1)", [agent])
        return rows[0] if rows else None

    result: dict[str, Any] | None = await wait_for_notification(sdk, agent, check)
    return result


async def test_hundred_questions_across_processes_in_order(pair: SDK, dsn: str) -> None:
    replier = await AgentProcess.start(dsn, "handle", "bob", "--reply")
    try:
        await replier.expect("ready")
        for i in range(100):
            answer = await pair.sync_conversation.send_and_wait(
                "alice", "bob", {"q": i}, timeout=30
            )
            assert answer == {"answer": {"q": i}}
    finally:
        await replier.stop()
    contexts = [e["context"] for e in replier.events if e["event"] == "handled"]
    assert [e["content"] for e in replier.events if e["event"] == "handled"] == [
        {"q": i} for i in range(100)
    ]
    assert all(c["requires_reply"] and c["message_type"] == "sync_request" for c in contexts)
    assert await session_state(pair) == [
        {"status": "active", "locked_agent_id": None, "waiting_for": None}
    ]
    order = await pair.db.fetch(
        "SELECT message_type FROM amp.messages WHERE session_id IS NOT NULL ORDER BY seq"
    )
    assert [r["message_type"] for r in order] == ["sync_request", "sync_reply"] * 100


async def test_handler_reply_and_ping_pong(pair: SDK) -> None:
    """Scenario B: bob answers alice's question with a question of his own, which
    unblocks alice; now bob waits until alice replies."""
    bob_got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    @pair.register_handler("bob")
    async def bob(message: Any, context: MessageContext) -> None:
        assert context.requires_reply and context.sender_external_id == "alice"
        final = await pair.sync_conversation.send_and_wait("bob", "alice", "which one?", timeout=30)
        bob_got.set_result(final)

    await pair.serve_handlers()
    answer = await pair.sync_conversation.send_and_wait("alice", "bob", "lunch?", timeout=30)
    assert answer == "which one?"
    await pair.sync_conversation.reply("alice", "bob", "the thai place")
    assert await asyncio.wait_for(bob_got, 30) == "the thai place"
    assert await session_state(pair) == [
        {"status": "active", "locked_agent_id": None, "waiting_for": None}
    ]


async def test_handler_returning_none_leaves_the_sender_waiting(pair: SDK) -> None:
    @pair.register_handler("bob")
    async def silent(message: Any, context: MessageContext) -> None:
        return None

    await pair.serve_handlers()
    with pytest.raises(ConversationTimeoutError):
        await pair.sync_conversation.send_and_wait("alice", "bob", "hello?", timeout=0.5)
    assert await session_state(pair) == [
        {"status": "active", "locked_agent_id": None, "waiting_for": None}
    ]


async def test_psql_replies_to_the_sdk(pair: SDK, dsn: str) -> None:
    """The replying agent is plain SQL: psql LISTENs, reads the request, replies."""
    bob = await PsqlSession.start(dsn)
    try:
        channel = await pair.db.fetch_value("SELECT amp.agent_channel('bob')")
        await bob.run(f"LISTEN {channel};")
        asking = asyncio.create_task(
            pair.sync_conversation.send_and_wait("alice", "bob", {"q": "2+2"}, timeout=30)
        )
        await request_for(pair, "bob")
        # psql prints the notifications its connection received after a command; the
        # server delivers one to an idle connection a moment after the commit
        for _ in range(200):
            await bob.run("SELECT 1;")
            if any(f'notification "{channel}"' in line for line in bob.notifications):
                break
        assert any(f'notification "{channel}"' in line for line in bob.notifications)
        await bob.run(
            "SELECT amp.sync_reply('bob', r.sender_external_id, jsonb_build_object("
            "'answer', 4, 'question', r.content), '{}', r.request_id) "
            "FROM amp.awaiting_reply('bob') r;"
        )
        assert await asyncio.wait_for(asking, 30) == {"answer": 4, "question": {"q": "2+2"}}
    finally:
        await bob.close()


async def test_sdk_handler_answers_psql(pair: SDK, dsn: str) -> None:
    """The asking agent is plain SQL; bob's handler runs in another process."""
    replier = await AgentProcess.start(dsn, "handle", "bob", "--reply")
    alice = await PsqlSession.start(dsn)
    try:
        await replier.expect("ready")
        channel = await pair.db.fetch_value("SELECT amp.agent_channel('alice')")
        await alice.run(f"LISTEN {channel};")
        await alice.run("""SELECT request_id FROM amp.sync_send('alice', 'bob', '"ping"') \\gset""")
        await replier.expect("handled")

        async def replied() -> bool:
            lines = await alice.run("SELECT status FROM amp.sync_result(:'request_id');")
            return "replied" in lines

        await wait_for_notification(pair, "alice", replied)
        lines = await alice.run("SELECT content FROM amp.sync_result(:'request_id');")
        assert json.loads(lines[-1]) == {"answer": "ping"}
    finally:
        await alice.close()
        await replier.stop()


async def test_two_processes_replying_to_one_wait(pair: SDK, dsn: str) -> None:
    repliers = [
        await AgentProcess.start(dsn, "reply", "bob", "alice", f"answer {i}") for i in range(2)
    ]
    try:
        for proc in repliers:
            await proc.expect("ready")
        asking = asyncio.create_task(
            pair.sync_conversation.send_and_wait("alice", "bob", "who answers?", timeout=30)
        )
        await request_for(pair, "bob")
        await pair.db.execute("SELECT pg_notify('amp_test_go', '{}')")
        outcomes = []
        for proc in repliers:
            event = await proc.next_event()
            while event["event"] not in ("replied", "refused"):
                event = await proc.next_event()
            outcomes.append(event["event"])
        answer = await asyncio.wait_for(asking, 30)
    finally:
        for proc in repliers:
            await proc.stop()
    assert sorted(outcomes) == ["refused", "replied"]
    assert answer == f"answer {outcomes.index('replied')}"
    replies = await pair.db.fetch_value(
        "SELECT count(*) FROM amp.messages WHERE message_type = 'sync_reply'"
    )
    assert replies == 1


async def test_reply_racing_the_timeout_has_exactly_one_outcome(pair: SDK) -> None:
    """The replier's amp.sync_reply and the waiter's amp.cancel_wait, started at
    the same time on two connections, many times: exactly one of them wins."""
    for i in range(40):
        row = await pair.db.fetch_one(
            "SELECT request_id FROM amp.sync_send('alice', 'bob', $1::text::jsonb)", [str(i)]
        )
        request = UUID(row["request_id"])
        reply = pair.sync_conversation.reply("bob", "alice", f"answer {i}")
        cancel = pair.db.fetch_value("SELECT amp.cancel_wait('alice', 'bob', $1)", [request])
        replied, cancelled = await asyncio.gather(reply, cancel, return_exceptions=True)
        reply_won = not isinstance(replied, BaseException)
        if not reply_won:
            assert isinstance(replied, InvalidSessionStateError)
        assert reply_won != (cancelled is True), (replied, cancelled)
        result = await pair.db.fetch_value("SELECT status FROM amp.sync_result($1)", [request])
        assert result == ("replied" if reply_won else "cancelled")
        assert await session_state(pair) == [
            {"status": "active", "locked_agent_id": None, "waiting_for": None}
        ]


async def test_timeout_then_late_reply_is_refused(pair: SDK) -> None:
    with pytest.raises(ConversationTimeoutError):
        await pair.sync_conversation.send_and_wait("alice", "bob", "anyone?", timeout=0.3)
    assert await session_state(pair) == [
        {"status": "active", "locked_agent_id": None, "waiting_for": None}
    ]
    with pytest.raises(InvalidSessionStateError):
        await pair.sync_conversation.reply("bob", "alice", "too late")
    # the handler that comes online afterwards is not bothered with the moot request
    handled: list[Any] = []

    @pair.register_handler("bob")
    async def late(message: Any, context: MessageContext) -> None:
        handled.append(message)

    await pair.serve_handlers()
    request = await pair.db.fetch_value(
        "SELECT id FROM amp.messages WHERE message_type = 'sync_request'"
    )
    await wait_delivered(pair, "alice", [UUID(request)])
    assert handled == []


async def test_end_conversation_wakes_the_waiter(pair: SDK) -> None:
    asking = asyncio.create_task(
        pair.sync_conversation.send_and_wait("alice", "bob", "still there?", timeout=30)
    )
    await request_for(pair, "bob")
    await pair.sync_conversation.end_conversation("bob", "alice")
    with pytest.raises(ConversationEndedError):
        await asyncio.wait_for(asking, 30)
    assert await session_state(pair) == [
        {"status": "ended", "locked_agent_id": None, "waiting_for": None}
    ]
    with pytest.raises(SessionNotFoundError):
        await pair.sync_conversation.end_conversation("alice", "bob")
    # a new conversation can start after the old one ended
    replying = asyncio.create_task(request_for(pair, "bob"))
    asking = asyncio.create_task(
        pair.sync_conversation.send_and_wait("alice", "bob", "again", timeout=30)
    )
    await replying
    await pair.sync_conversation.reply("bob", "alice", "hello again")
    assert await asking == "hello again"


async def test_two_hundred_concurrent_conversations_in_one_process(dsn: str) -> None:
    async with (
        AgentMessaging[Any](make_config(dsn, handler_concurrency=64)) as repliers,
        AgentMessaging[Any](make_config(dsn)) as askers,
    ):
        await repliers.register_organization("org1")
        for i in range(200):
            await repliers.register_agent(f"asker{i}", "org1")
            await repliers.register_agent(f"replier{i}", "org1")

            @repliers.register_handler(f"replier{i}")
            async def answer(message: Any, context: MessageContext) -> Any:
                return {"to": context.sender_external_id, "echo": message}

        await repliers.serve_handlers()
        answers = await asyncio.gather(
            *(
                askers.sync_conversation.send_and_wait(f"asker{i}", f"replier{i}", i, timeout=60)
                for i in range(200)
            )
        )
    assert answers == [{"to": f"asker{i}", "echo": i} for i in range(200)]


async def test_bad_input(pair: SDK) -> None:
    conv = pair.sync_conversation
    with pytest.raises(AgentNotFoundError):
        await conv.send_and_wait("alice", "nobody", 1, timeout=1)
    with pytest.raises(InvalidInputError):
        await conv.send_and_wait("", "bob", 1, timeout=1)
    with pytest.raises(InvalidInputError, match="itself"):
        await conv.send_and_wait("alice", "alice", 1, timeout=1)
    with pytest.raises(InvalidInputError):
        await conv.send_and_wait("alice", "bob", object(), timeout=1)
    with pytest.raises(SessionNotFoundError):
        await conv.reply("bob", "alice", "no one asked")
    with pytest.raises(SessionNotFoundError):
        await conv.end_conversation("alice", "bob")
    assert await pair.db.fetch_value("SELECT count(*) FROM amp.messages") == 0
    assert await pair.db.fetch_value("SELECT count(*) FROM amp.sessions") == 0
    # waiting twice in the same conversation is refused; the first wait is untouched
    first = asyncio.create_task(conv.send_and_wait("alice", "bob", "one", timeout=30))
    await request_for(pair, "bob")
    with pytest.raises(InvalidSessionStateError, match="already waiting"):
        await conv.send_and_wait("alice", "bob", "two", timeout=30)
    with pytest.raises(SessionNotFoundError):
        await conv.reply("carol", "alice", "not my conversation")
    with pytest.raises(InvalidSessionStateError, match="not waiting"):
        await conv.reply("alice", "bob", "bob is not the one waiting")
    await conv.reply("bob", "alice", "answer to one")
    assert await first == "answer to one"
