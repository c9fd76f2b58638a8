"""Batches of one-way messages: ``one_way.send_many`` and ``one_way.broadcast``
(``amp.send_one_way_many``): one call, one transaction, all or nothing."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from agent_messaging import AgentMessaging, AgentNotFoundError, InvalidInputError

from .helpers import AgentProcess, make_config, wait_delivered
from .test_one_way import handled_ns

SDK = AgentMessaging[dict[str, object]]


@pytest.fixture
async def trio3(sdk: SDK) -> SDK:
    await sdk.register_organization("org1", "Org One")
    for agent in ("alice", "bob", "carol"):
        await sdk.register_agent(agent, "org1", agent.title())
    return sdk


async def test_send_many_reaches_a_handler_in_another_process(trio3: SDK, dsn: str) -> None:
    proc = await AgentProcess.start(dsn, "--concurrency", "8", "handle", "bob")
    try:
        await proc.expect("ready")
        ids = await trio3.one_way.send_many(
            "alice", [("bob", {"n": i}) for i in range(300)], metadata={"batch": 1}
        )
        assert len(ids) == len(set(ids)) == 300
        seen = await handled_ns([proc], 300)
        outcome = await wait_delivered(trio3, "alice", ids)
    finally:
        await proc.stop()
    assert sorted(set(seen)) == list(range(300))
    assert set(outcome.values()) == {"delivered"}
    # ids come back in the order of the batch, each message with its own content
    rows = await trio3.db.fetch(
        "SELECT id, content, metadata FROM amp.messages WHERE id = ANY($1) ORDER BY seq", [ids]
    )
    assert [str(r["id"]) for r in rows] == [str(i) for i in ids]
    assert [r["content"] for r in rows] == [{"n": i} for i in range(300)]
    assert all(r["metadata"] == {"batch": 1} for r in rows)
    event = next(e for e in proc.events if e["event"] == "handled")
    assert event["context"]["sender_external_id"] == "alice"
    assert event["context"]["message_type"] == "one_way"


async def test_broadcast_reaches_every_recipient_in_other_processes(trio3: SDK, dsn: str) -> None:
    bob = await AgentProcess.start(dsn, "handle", "bob")
    carol = await AgentProcess.start(dsn, "handle", "carol")
    try:
        await bob.expect("ready")
        await carol.expect("ready")
        ids = await trio3.one_way.broadcast("alice", ["bob", "carol"], {"n": 7})
        assert len(ids) == 2
        assert await handled_ns([bob], {7}) == [7]
        assert await handled_ns([carol], {7}) == [7]
        outcome = await wait_delivered(trio3, "alice", ids)
    finally:
        await bob.stop()
        await carol.stop()
    assert set(outcome.values()) == {"delivered"}
    recipients = await trio3.db.fetch(
        "SELECT a.external_id AS r FROM amp.messages m JOIN amp.agents a ON a.id = m.recipient_id"
        " WHERE m.id = ANY($1) ORDER BY m.seq",
        [ids],
    )
    assert [r["r"] for r in recipients] == ["bob", "carol"]


async def count_messages(sdk: SDK) -> int:
    value: int = await sdk.db.fetch_value("SELECT count(*) FROM amp.messages")
    return value


async def test_a_bad_element_refuses_the_whole_batch(trio3: SDK, dsn: str) -> None:
    good = [("bob", {"n": 0}), ("carol", {"n": 1})]
    with pytest.raises(AgentNotFoundError, match="batch element 2: agent 'nobody' not found"):
        await trio3.one_way.send_many("alice", [*good, ("nobody", {"n": 2}), ("bob", {"n": 3})])
    with pytest.raises(InvalidInputError, match=r"batch element 1: .*itself"):
        await trio3.one_way.send_many("alice", [good[0], ("alice", {"n": 1})])
    with pytest.raises(InvalidInputError, match=r"batch element 2: .*serialisable"):
        await trio3.one_way.send_many("alice", [*good, ("bob", {"n": object()})])
    with pytest.raises(InvalidInputError, match="batch element 1: agent external id"):
        await trio3.one_way.broadcast("alice", ["bob", ""], {"n": 1})
    with pytest.raises(InvalidInputError, match="at least one recipient"):
        await trio3.one_way.send_many("alice", [])
    with pytest.raises(AgentNotFoundError):
        await trio3.one_way.broadcast("nobody", ["bob"], {"n": 1})
    async with AgentMessaging[Any](make_config(dsn, max_message_bytes=100)) as small:
        with pytest.raises(InvalidInputError, match=r"batch element 1: .*limit"):
            await small.one_way.send_many("alice", [("bob", "x"), ("bob", "x" * 200)])
    assert await count_messages(trio3) == 0


def test_sql_batch_refusal_names_the_element_and_stores_nothing(
    sql: psycopg.Connection[tuple[object, ...]],
) -> None:
    sql.execute("SELECT amp.register_organization('o')")
    sql.execute("SELECT amp.register_agent('a', 'o'), amp.register_agent('b', 'o')")
    sql.execute("INSERT INTO amp.settings (key, value) VALUES ('max_message_bytes', '64')")
    cases = [
        # content over the server's limit at element 1
        (
            "SELECT amp.send_one_way_many('a', '{b,b}', ARRAY['1', to_jsonb(repeat('x', 80))])",
            "AM001",
            "batch element 1: message content and metadata are",
        ),
        (
            "SELECT amp.send_one_way_many('a', '{b,b,b}', ARRAY['1', NULL, '2']::jsonb[])",
            "AM001",
            "batch element 1: message content must not be null",
        ),
        (
            "SELECT amp.send_one_way_many('a', '{b,c}', '{1,2}')",
            "AM020",
            "batch element 1: agent 'c' not found",
        ),
        (
            "SELECT amp.send_one_way_many('a', '{b,b,b}', '{1,2}')",
            "AM001",
            "3 recipients but 2 contents",
        ),
        (
            "SELECT amp.send_one_way_many('a', '{b}', '{1}', '[]')",
            "AM001",
            "metadata must be a JSON object",
        ),
    ]
    for statement, code, text in cases:
        with pytest.raises(psycopg.Error) as failure:
            sql.execute(statement)
        assert failure.value.sqlstate == code, statement
        assert text in str(failure.value), statement
    assert sql.execute("SELECT count(*) FROM amp.messages").fetchone() == (0,)
    # one content for every recipient: a broadcast from SQL
    sql.execute("SELECT amp.register_agent('c', 'o')")
    rows = sql.execute("SELECT * FROM amp.send_one_way_many('a', '{b,c}', '{1}')").fetchall()
    assert len(rows) == 2
    assert sql.execute(
        "SELECT array_agg(content ORDER BY seq), array_agg(delivery_status ORDER BY seq)"
        " FROM amp.messages"
    ).fetchone() == ([1, 1], ["pending", "pending"])


def test_a_batch_wakes_each_recipient_once(dsn: str) -> None:
    """One hint per recipient per batch: that of its first message, with its count
    (a hint per message cost a NOTIFY and a wake-up each)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT amp.register_organization('hints')")
        for name in ("h_from", "h_one", "h_two"):
            conn.execute("SELECT amp.register_agent(%s, 'hints')", (name,))
        channels = {
            name: conn.execute("SELECT amp.agent_channel(%s)", (name,)).fetchone()[0]
            for name in ("h_one", "h_two")
        }
        conn.execute("SELECT amp.listen(%s)", (list(channels.values()),))
        recipients = ["h_one"] * 50 + ["h_two"] + ["h_one"] * 49
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT amp.send_one_way_many('h_from', %s, ARRAY['{}']::jsonb[])",
                (recipients,),
            ).fetchall()
        ]
        got = [(n.channel, json.loads(n.payload)) for n in conn.notifies(timeout=0.2)]
    assert len(ids) == 100
    assert sorted(channel for channel, _ in got) == sorted(channels.values()), got
    hints = dict(got)
    one, two = hints[channels["h_one"]], hints[channels["h_two"]]
    assert (one["message_id"], one["count"]) == (str(ids[0]), 99), one
    assert two["message_id"] == str(ids[50]) and "count" not in two, two
