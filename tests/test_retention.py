"""Retention: amp.prune removes what is past the horizon and nothing live."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any
from uuid import UUID

import psqlpy
import psycopg
import pytest

from agent_messaging import AgentMessaging, InvalidInputError
from agent_messaging.retention import parse_duration

from .helpers import make_config

Conn = psycopg.Connection[tuple[Any, ...]]
OLD = "now() - interval '40 days'"


def one(conn: Conn, query: str, *params: object) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def settle(conn: Conn, agent: str, *, fail: bool = False) -> list[UUID]:
    """Claim every pending push of ``agent`` as a worker and acknowledge (or fail) it."""
    worker = one(conn, "SELECT amp.register_worker('test', 1)")
    conn.execute("SELECT amp.serve_agents(%s, ARRAY[%s])", (worker, agent))
    ids = [
        r[0]
        for r in conn.execute("SELECT id FROM amp.claim_deliveries(%s, 100, '30s', 5)", (worker,))
    ]
    if fail:
        for message_id in ids:
            conn.execute("SELECT amp.fail_delivery(%s, %s, 'boom', '0s', 1)", (worker, message_id))
    else:
        conn.execute("SELECT amp.ack_deliveries(%s, %s)", (worker, ids))
    conn.execute("SELECT amp.unregister_worker(%s)", (worker,))
    return ids


def meeting(conn: Conn, host: str, guests: list[str]) -> UUID:
    # the host attends by creating (listed too, it would get an invitation of its own)
    meeting_id: UUID = one(conn, "SELECT amp.create_meeting(%s, %s)", host, list(guests))
    for guest in guests:
        conn.execute("SELECT amp.attend_meeting(%s, %s)", (guest, meeting_id))
    conn.execute('SELECT amp.start_meeting(%s, %s, \'{"t": "agenda"}\')', (host, meeting_id))
    conn.execute('SELECT amp.speak(%s, %s, \'{"t": "point"}\')', (guests[0], meeting_id))
    return meeting_id


def backdate(conn: Conn) -> None:
    """Everything that exists now becomes 40 days old."""
    conn.execute(f"UPDATE amp.messages SET created_at = {OLD}")
    conn.execute(f"UPDATE amp.sessions SET ended_at = {OLD} WHERE status = 'ended'")
    conn.execute(f"UPDATE amp.meetings SET ended_at = {OLD} WHERE status = 'ended'")


async def test_prune_removes_the_past_and_keeps_everything_live(
    trio: AgentMessaging[Any], sql: Conn
) -> None:
    for name in ("dave", "erin"):
        sql.execute("SELECT amp.register_agent(%s, 'org1', %s)", (name, name))
    send = "SELECT amp.send_one_way(%s, %s, %s)"
    # -- what must go: settled, and 40 days old
    delivered = one(sql, send, "alice", "bob", '{"n": "delivered"}')
    settle(sql, "bob")
    failed = one(sql, send, "alice", "carol", '{"n": "failed"}')
    settle(sql, "carol", fail=True)
    read = one(sql, "SELECT amp.async_send('alice', 'bob', '{\"n\": \"read\"}')")
    assert [r[0] for r in sql.execute("SELECT id FROM amp.read_unread('bob')")] == [read]
    # a sync question answered, then the conversation ended: everything of it goes
    question = one(sql, "SELECT request_id FROM amp.sync_send('alice', 'carol', '{\"q\": 1}')")
    settle(sql, "carol")
    answer = one(sql, "SELECT amp.sync_reply('carol', 'alice', '{\"a\": 1}')")
    ended_session = one(sql, "SELECT amp.end_conversation('alice', 'carol')")
    ended_meeting = meeting(sql, "dave", ["erin", "carol"])
    settle(sql, "erin")
    settle(sql, "carol")
    sql.execute("SELECT amp.end_meeting('dave', %s)", (ended_meeting,))
    # -- what must stay although 40 days old
    unread = one(sql, "SELECT amp.async_send('carol', 'bob', '{\"n\": \"unread\"}')")
    # bob waits on dave (its request is delivered to dave's handler, not answered yet)
    awaited = one(sql, "SELECT request_id FROM amp.sync_send('bob', 'dave', '{\"q\": 2}')")
    settle(sql, "dave")
    # a ping-pong: erin asks alice, alice answers by asking back and now waits on erin
    ping = one(sql, "SELECT request_id FROM amp.sync_send('erin', 'alice', '{\"q\": 3}')")
    settle(sql, "alice")
    pong = one(sql, "SELECT request_id FROM amp.sync_send('alice', 'erin', '{\"q\": 4}')")
    live_meeting = meeting(sql, "alice", ["bob", "carol"])
    settle(sql, "bob")
    settle(sql, "carol")
    pending = one(sql, send, "bob", "alice", '{"n": "pending"}')  # nobody claims it
    backdate(sql)
    # -- what must stay because it is young
    young = one(sql, send, "alice", "bob", '{"n": "young"}')
    settle(sql, "bob")
    # a question answered 40 days ago whose answer is recent: both stay (reply_to)
    old_q = one(sql, "SELECT request_id FROM amp.sync_send('dave', 'erin', '{\"q\": 5}')")
    settle(sql, "erin")
    sql.execute(f"UPDATE amp.messages SET created_at = {OLD} WHERE id = %s", (old_q,))
    new_a = one(sql, "SELECT amp.sync_reply('erin', 'dave', '{\"a\": 5}')")
    # an ended meeting with an invitation nobody took (erin's handler never came back)
    uninvited = one(sql, "SELECT amp.create_meeting('dave', ARRAY['dave', 'erin'])")
    sql.execute("SELECT amp.end_meeting('dave', %s)", (uninvited,))
    sql.execute(f"UPDATE amp.meetings SET ended_at = {OLD} WHERE id = %s", (uninvited,))
    sql.execute(f"UPDATE amp.messages SET created_at = {OLD} WHERE meeting_id = %s", (uninvited,))

    before = one(sql, "SELECT count(*) FROM amp.messages")
    result = await trio.prune(timedelta(days=30), batch_size=2)  # small: many batches

    gone = {delivered, failed, read, question, answer}
    kept = {pending, unread, awaited, ping, pong, young, old_q, new_a}
    ids = {r[0] for r in sql.execute("SELECT id FROM amp.messages WHERE meeting_id IS NULL")}
    assert ids == kept
    assert result.messages == len(gone)
    assert result.meetings == 1 and result.sessions == 1
    assert result.batches > 3
    meetings = {r[0] for r in sql.execute("SELECT id FROM amp.meetings")}
    assert meetings == {live_meeting, uninvited}
    for table in ("meeting_participants", "meeting_events", "messages"):
        left = one(sql, f"SELECT count(*) FROM amp.{table} WHERE meeting_id = %s", ended_meeting)
        assert left == 0, table
    assert one(sql, "SELECT count(*) FROM amp.messages WHERE meeting_id = %s", live_meeting) >= 4
    assert one(sql, "SELECT count(*) FROM amp.sessions WHERE id = %s", ended_session) == 0
    assert before - one(sql, "SELECT count(*) FROM amp.messages") > len(gone)  # + the meeting's

    # everything live still works
    sql.execute("SELECT amp.sync_reply('dave', 'bob', '{\"a\": 2}')")
    assert one(sql, "SELECT status FROM amp.sync_result(%s)", awaited) == "replied"
    sql.execute("SELECT amp.sync_reply('erin', 'alice', '{\"a\": 4}')")
    assert one(sql, "SELECT status FROM amp.sync_result(%s)", pong) == "replied"
    assert [r[0] for r in sql.execute("SELECT id FROM amp.read_unread('bob')")] == [unread]
    assert settle(sql, "alice") == [pending]
    sql.execute("SELECT amp.speak('carol', %s, '{\"t\": \"still here\"}')", (live_meeting,))
    # now settled, the old pending and unread messages go too; the rest stays
    # (the old requests now have recent answers)
    again = await trio.prune(timedelta(days=30))
    assert (again.messages, again.meetings, again.sessions) == (2, 0, 0)
    left = {r[0] for r in sql.execute("SELECT id FROM amp.messages WHERE meeting_id IS NULL")}
    assert pending not in left and unread not in left
    assert {awaited, ping, pong, young, old_q, new_a} <= left


def test_procedure_default_horizon_and_validation(dsn: str, sql: Conn) -> None:
    sql.execute("SELECT amp.register_organization('o', 'O')")
    sql.execute("SELECT amp.register_agent('a', 'o', 'A')")
    sql.execute("SELECT amp.register_agent('b', 'o', 'B')")
    sql.execute("SELECT amp.async_send('a', 'b', '{}')")
    sql.execute("SELECT * FROM amp.read_unread('b')")
    sql.execute("UPDATE amp.messages SET created_at = now() - interval '20 days'")
    assert one(sql, "SELECT amp.retention()") == timedelta(days=30)
    assert sql.execute("CALL amp.prune()").fetchone() == (0, 0, 0)  # 20 days < 30
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET amp.retention = '10 days'")
        assert one(conn, "SELECT amp.retention()") == timedelta(days=10)
        assert conn.execute("CALL amp.prune(NULL, 5)").fetchone() == (1, 0, 0)
    with pytest.raises(psycopg.Error, match="AM001"):
        sql.execute("CALL amp.prune('-1 day')")
    with pytest.raises(psycopg.Error, match="AM001"):
        sql.execute("SELECT * FROM amp.prune_messages(now(), 0)")


async def test_sdk_prune_uses_config_retention(dsn: str, sql: Conn) -> None:
    sql.execute("SELECT amp.register_organization('o', 'O')")
    sql.execute("SELECT amp.register_agent('a', 'o', 'A')")
    sql.execute("SELECT amp.register_agent('b', 'o', 'B')")
    sql.execute("SELECT amp.async_send('a', 'b', '{}')")
    sql.execute("SELECT * FROM amp.read_unread('b')")
    sql.execute("UPDATE amp.messages SET created_at = now() - interval '3 hours'")
    async with AgentMessaging[Any](make_config(dsn, retention="4h")) as sdk:
        assert (await sdk.prune()).messages == 0
    async with AgentMessaging[Any](make_config(dsn, retention="2h")) as sdk:
        assert (await sdk.prune()).messages == 1
        with pytest.raises(InvalidInputError):
            await sdk.prune(timedelta(days=-1))
    with pytest.raises(ValueError):
        make_config(dsn, retention="thirty days")


def test_parse_duration() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("0s") == timedelta(0)
    for bad in ("", "30", "d", "30x", "30d garbage"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_cli_prune(dsn: str, sql: Conn) -> None:
    sql.execute("SELECT amp.register_organization('o', 'O')")
    sql.execute("SELECT amp.register_agent('a', 'o', 'A')")
    sql.execute("SELECT amp.register_agent('b', 'o', 'B')")
    for _ in range(3):
        sql.execute("SELECT amp.async_send('a', 'b', '{}')")
    sql.execute("SELECT * FROM amp.read_unread('b', NULL, 2)")  # one stays unread
    sql.execute("UPDATE amp.messages SET created_at = now() - interval '31 days'")
    amp = [sys.executable, "-m", "agent_messaging.cli", "prune", "--database-url", dsn]
    done = subprocess.run(
        [*amp, "--older-than", "30d"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "pruned 2 messages, 0 meetings, 0 conversations" in done.stdout
    assert one(sql, "SELECT count(*) FROM amp.messages") == 1
    bad = subprocess.run(
        [*amp, "--older-than", "soon"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode != 0 and "not a duration" in bad.stderr


BACKLOG = 100_000


async def test_prune_of_a_large_backlog_does_not_block_live_traffic(dsn: str, sql: Conn) -> None:
    """Sends keep going while a prune deletes a large backlog; the prune skips rows
    someone holds instead of waiting on them. Prints the send latency figures."""
    sql.execute("SELECT amp.register_organization('o', 'O')")
    for name in ("a", "b", "c"):
        sql.execute("SELECT amp.register_agent(%s, 'o', %s)", (name, name))
    sql.execute(
        """
        INSERT INTO amp.messages (message_type, sender_id, recipient_id, content,
                                  delivery_status, attempts, delivered_at, created_at)
        SELECT 'one_way', a.id, b.id, jsonb_build_object('i', i), 'delivered', 1,
               now() - interval '40 days', now() - interval '40 days'
        FROM generate_series(1, %s) i,
             (SELECT id FROM amp.agents WHERE external_id = 'a') a,
             (SELECT id FROM amp.agents WHERE external_id = 'b') b
        """,
        (BACKLOG,),
    )
    held = one(sql, "SELECT id FROM amp.messages ORDER BY seq OFFSET 5000 LIMIT 1")
    # live traffic's lock: another transaction holds one old row for the whole prune
    holder = psycopg.connect(dsn)
    holder.execute("SELECT 1 FROM amp.messages WHERE id = %s FOR UPDATE", (held,))

    pool = psqlpy.ConnectionPool(dsn=dsn, max_db_pool_size=2)
    conn = await pool.connection()
    # a send that has to wait on a lock for 2 s fails: proof that nothing blocks it
    await conn.execute("SET lock_timeout = '2s'")

    async def send() -> float:
        start = time.perf_counter()
        await conn.execute("SELECT amp.send_one_way('c', 'b', '{\"live\": true}')")
        return time.perf_counter() - start

    idle = [await send() for _ in range(200)]
    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        pruning = asyncio.create_task(sdk.prune(timedelta(days=30), batch_size=1000))
        during: list[float] = []
        while not pruning.done():
            during.append(await send())
        result = await pruning
    holder.rollback()
    holder.close()
    pool.close()

    def ms(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000

    print(
        f"\nprune of {BACKLOG} messages: {len(during)} sends meanwhile; send latency ms "
        f"idle p50 {ms(idle, 0.5):.2f} p99 {ms(idle, 0.99):.2f} | during prune p50 "
        f"{ms(during, 0.5):.2f} p99 {ms(during, 0.99):.2f} max {max(during) * 1000:.1f} "
        f"(median ratio {statistics.median(during) / statistics.median(idle):.2f})"
    )
    assert result.messages == BACKLOG - 1  # all but the held row
    assert one(sql, "SELECT count(*) FROM amp.messages WHERE id = %s", held) == 1
    assert one(
        sql,
        "SELECT count(*) FROM amp.messages WHERE sender_id = "
        "(SELECT id FROM amp.agents WHERE external_id = 'c')",
    ) == len(idle) + len(during)
    assert len(during) >= 1
    assert max(during) < 2.0  # generous: a blocked send would sit there until the prune ends
