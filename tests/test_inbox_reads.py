"""Inbox reads: bounded pages, paging, and reads that cannot lose messages.

A read whose answer never reaches the reader (the connection drops after the
commit, the process dies) must not lose its messages: ``amp.read_unread`` with a
lease hands them out under a receipt, and only ``amp.confirm_read`` marks them read.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from agent_messaging import AgentMessaging, InvalidInputError

SDK = AgentMessaging[Any]
Conn = psycopg.Connection[tuple[object, ...]]


def unread(sql: Conn) -> int:
    row = sql.execute(
        "SELECT count(*) FROM amp.messages WHERE message_type = 'async' AND read_at IS NULL"
    ).fetchone()
    assert row is not None and isinstance(row[0], int)
    return row[0]


async def test_a_read_whose_answer_is_lost_gives_the_messages_back(
    trio: SDK, dsn: str, sql: Conn
) -> None:
    for i in range(3):
        await trio.async_conversation.send("alice", "bob", i)
    # a reader takes them under a lease, commits, and is gone before confirming:
    # its connection closes, the answer is never used
    with psycopg.connect(dsn, autocommit=True) as lost:
        taken = lost.execute(
            "SELECT content, receipt FROM amp.read_unread('bob', NULL, 10, interval '1 hour')"
        ).fetchall()
    assert [row[0] for row in taken] == [0, 1, 2]
    assert unread(sql) == 3  # nothing is marked read
    # while the lease holds, another reader does not get them (no overlap)...
    assert await trio.async_conversation.get_unread_messages("bob") == []
    # ...and once it has run out (here: moved into the past), they come back
    sql.execute("UPDATE amp.messages SET read_lease_until = now() - interval '1 second'")
    assert await trio.async_conversation.get_unread_messages("bob") == [0, 1, 2]
    assert unread(sql) == 0
    assert await trio.async_conversation.get_unread_messages("bob") == []


async def test_a_read_rolled_back_or_released_loses_nothing(trio: SDK, dsn: str, sql: Conn) -> None:
    await trio.async_conversation.send("alice", "bob", "keep")
    with psycopg.connect(dsn) as tx:  # a transaction whose result is discarded
        assert tx.execute("SELECT content FROM amp.read_unread('bob')").fetchall() == [("keep",)]
        tx.rollback()
    assert unread(sql) == 1
    # a confirmation naming none of its messages releases them at once
    receipt = sql.execute(
        "SELECT receipt FROM amp.read_unread('bob', NULL, NULL, interval '1 hour')"
    ).fetchone()
    assert receipt is not None
    assert sql.execute("SELECT amp.confirm_read('bob', %s, '{}')", [receipt[0]]).fetchall() == []
    assert await trio.async_conversation.get_unread_messages("bob") == ["keep"]


async def test_a_late_confirmation_does_not_claim_a_message_taken_again(
    trio: SDK, sql: Conn
) -> None:
    await trio.async_conversation.send("alice", "bob", "once")
    first = sql.execute(
        "SELECT id, receipt FROM amp.read_unread('bob', NULL, NULL, interval '1 hour')"
    ).fetchone()
    assert first is not None
    sql.execute("UPDATE amp.messages SET read_lease_until = now() - interval '1 second'")
    assert await trio.async_conversation.get_unread_messages("bob") == ["once"]
    # the first reader's confirmation comes too late: it gets nothing, so it must
    # not use the message, which the second reader has
    late = sql.execute("SELECT amp.confirm_read('bob', %s, ARRAY[%s])", [first[1], first[0]])
    assert late.fetchall() == []


async def test_reading_without_a_lease_marks_read_at_once(trio: SDK, sql: Conn) -> None:
    await trio.async_conversation.send("alice", "bob", "psql style")
    rows = sql.execute("SELECT content, receipt FROM amp.read_unread('bob')").fetchall()
    assert rows == [("psql style", None)] and unread(sql) == 0


async def test_default_page_and_paging(trio: SDK, sql: Conn) -> None:
    for i in range(250):
        await trio.async_conversation.send("alice", "bob", i)
    # the default page is 100; the rest waits for the next call
    assert await trio.async_conversation.get_unread_messages("bob") == list(range(100))
    assert unread(sql) == 150
    assert await trio.async_conversation.get_unread_messages("bob", limit=1000) == list(
        range(100, 250)
    )
    # page through everything again, read or not, without marking anything
    await trio.async_conversation.send("carol", "bob", "unread one")
    seen: list[Any] = []
    after = 0
    while page := await trio.async_conversation.get_inbox("bob", after_seq=after, limit=70):
        seen += [m.content for m in page]
        after = page[-1].seq
        assert all(m.read_at is not None for m in page if m.sender_external_id == "alice")
    assert seen == [*range(250), "unread one"]
    only_carol = await trio.async_conversation.get_inbox("bob", "carol")
    assert [(m.content, m.read_at) for m in only_carol] == [("unread one", None)]
    assert unread(sql) == 1


async def test_bad_limits_are_refused_and_nothing_is_read(trio: SDK, sql: Conn) -> None:
    await trio.async_conversation.send("alice", "bob", 1)
    conv = trio.async_conversation
    for bad in (-1, 0, 2**40, 1.5, "10", True):
        with pytest.raises(InvalidInputError, match="limit must be"):
            await conv.get_unread_messages("bob", limit=bad)
    with pytest.raises(InvalidInputError, match="limit must be from 1 to 1000, not 1001"):
        await conv.get_unread_messages("bob", limit=1001)
    with pytest.raises(InvalidInputError, match="limit must be from 1 to 1000"):
        await conv.get_messages_from_agent("bob", "alice", mark_read=False, limit=5000)
    with pytest.raises(InvalidInputError, match="after_seq"):
        await conv.get_inbox("bob", after_seq=-1)
    with pytest.raises(psycopg.Error, match="limit must be from 1 to 1000, not -1"):
        sql.execute("SELECT * FROM amp.read_unread('bob', NULL, -1)")
    assert unread(sql) == 1
    # an administrator sets the pages (amp.settings)
    sql.execute(
        "INSERT INTO amp.settings VALUES ('default_page_size', '2'), ('max_page_size', '5000')"
    )
    for i in range(2, 6):
        await conv.send("alice", "bob", i)
    assert await conv.get_unread_messages("bob") == [1, 2]
    assert await conv.get_unread_messages("bob", limit=5000) == [3, 4, 5]


async def test_resume_holds_a_message_while_its_handler_runs(trio: SDK, sql: Conn) -> None:
    held: list[object] = []

    @trio.register_handler("bob")
    async def bob(message: Any, context: Any) -> None:
        row = sql.execute(
            "SELECT read_at IS NULL, read_lease_until > now() FROM amp.messages WHERE id = %s",
            [context.message_id],
        ).fetchone()
        held.append(row)

    await trio.async_conversation.send("alice", "bob", "one")
    assert await trio.async_conversation.resume_agent_handler("bob") == 1
    # unread but held while the handler ran; read afterwards
    assert held == [(True, True)] and unread(sql) == 0
