"""Poison messages: content no client can decode never takes other messages with it.

The SDK refuses such content at the door (``test_bad_input.py``); these rows are put
in directly with SQL, as an administrator bypassing every check could. Before the
fix, psqlpy decoded a whole result at once and failed it on one such value: a
handler's batch failed as a whole, an inbox read marked every message read and then
raised (losing them), a meeting's history and every turn wait broke.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import psycopg

from agent_messaging import AgentMessaging, MessageContext

from .helpers import wait_delivered

SDK = AgentMessaging[Any]

#: PostgreSQL stores it; psqlpy cannot decode it (nesting beyond 127) but the SDK,
#: which reads content as text now, can
DEEP = "[" * 200 + "]" * 200
#: no client decodes it: Python refuses integers of more than 4300 digits
UNDECODABLE = "1" + "0" * 5000


def insert(
    sql: psycopg.Connection[tuple[object, ...]],
    kind: str,
    sender: str,
    recipient: str | None,
    content: str,
    *,
    push: bool = False,
    meeting: UUID | None = None,
) -> UUID:
    """A message row inserted directly (no amp.* function, no checks)."""
    row = sql.execute(
        "INSERT INTO amp.messages (message_type, sender_id, recipient_id, content, "
        "meeting_id, delivery_status) VALUES (%s, (SELECT id FROM amp.agents WHERE "
        "external_id = %s), (SELECT id FROM amp.agents WHERE external_id = %s), "
        "%s::jsonb, %s, %s) RETURNING id",
        [kind, sender, recipient, content, meeting, "pending" if push else None],
    ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


async def test_poison_to_a_handler_fails_alone(
    trio: SDK, sql: psycopg.Connection[tuple[object, ...]]
) -> None:
    got: list[Any] = []

    @trio.register_handler("bob")
    async def bob(message: Any, context: MessageContext) -> None:
        got.append(message)

    ids = [
        insert(sql, "one_way", "alice", "bob", '"good 1"', push=True),
        insert(sql, "one_way", "alice", "bob", UNDECODABLE, push=True),
        insert(sql, "one_way", "alice", "bob", DEEP, push=True),
        insert(sql, "one_way", "alice", "bob", '"good 2"', push=True),
    ]
    await trio.serve_handlers()
    outcome = await wait_delivered(trio, "alice", ids)
    assert [outcome[i] for i in ids] == ["delivered", "failed", "delivered", "delivered"]
    assert got[0] == "good 1" and got[-1] == "good 2" and len(got) == 3
    deep: Any = got[1]
    for _ in range(199):
        deep = deep[0]
    assert deep == []
    [failed] = await trio.db.fetch(
        "SELECT message_id, attempts, last_error FROM amp.failed_deliveries"
    )
    assert UUID(str(failed["message_id"])) == ids[1]
    assert failed["attempts"] == 1  # dead-lettered at once: a retry cannot help
    assert "cannot be decoded" in failed["last_error"] and "4300 digits" in failed["last_error"]


async def test_poison_in_an_inbox_is_set_aside_and_nothing_else_is_lost(
    trio: SDK, sql: psycopg.Connection[tuple[object, ...]]
) -> None:
    for content in ('"good 1"', UNDECODABLE, DEEP, '"good 2"'):
        insert(sql, "async", "alice", "bob", content)
    got = await trio.async_conversation.get_unread_messages("bob")
    assert got[0] == "good 1" and got[2] == "good 2" and len(got) == 3
    rows = sql.execute(
        "SELECT read_at IS NOT NULL, delivery_status, last_error FROM amp.messages ORDER BY seq"
    ).fetchall()
    # the undecodable one was not returned, so it is not marked read: dead-lettered
    assert [r[0] for r in rows] == [True, False, True, True]
    assert rows[1][1] == "failed" and "cannot be decoded" in str(rows[1][2])
    assert await trio.async_conversation.get_unread_messages("bob") == []
    assert sql.execute("SELECT count(*) FROM amp.failed_deliveries").fetchone() == (1,)
    assert sql.execute("SELECT count(*) FROM amp.agent_inbox").fetchone() == (0,)
    # paging through the inbox reports it instead of failing
    page = await trio.async_conversation.get_inbox("bob")
    assert [m.content is None for m in page] == [False, True, False, False]
    assert page[1].error is not None and "cannot be decoded" in page[1].error


async def test_poison_in_a_meeting_breaks_neither_history_nor_turns(
    trio: SDK, sql: psycopg.Connection[tuple[object, ...]]
) -> None:
    meeting = await trio.meeting.create_meeting("alice", ["alice", "bob"], turn_duration=None)
    bob_waits = asyncio.create_task(trio.meeting.attend_meeting("bob", meeting, timeout=30))
    await trio.meeting.wait_until_ready(meeting, timeout=30)
    await trio.meeting.start_meeting("alice", meeting, "good 1")
    assert (await bob_waits).your_turn
    insert(sql, "meeting", "alice", None, UNDECODABLE, meeting=meeting)
    insert(sql, "meeting", "alice", None, DEEP, meeting=meeting)
    alice_waits = asyncio.create_task(trio.meeting.attend_meeting("alice", meeting, timeout=30))
    bob_speaks = asyncio.create_task(trio.meeting.speak("bob", meeting, "good 2", timeout=30))
    turn = await asyncio.wait_for(alice_waits, 30)
    assert turn.your_turn
    assert [m.content for m in turn.messages if m.message_type == "meeting"][-1] == "good 2"
    history = [m for m in await trio.meeting.get_meeting_history(meeting) if not m.system]
    assert [m.content is None for m in history] == [False, True, False, False]
    assert history[0].content == "good 1" and history[3].content == "good 2"
    assert history[1].error is not None and "cannot be decoded" in history[1].error
    await trio.meeting.end_meeting("alice", meeting)
    assert (await asyncio.wait_for(bob_speaks, 30)).meeting_ended
