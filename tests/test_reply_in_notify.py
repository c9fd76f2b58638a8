"""A sync reply's hint carries its content (unless ``amp.notify_content = off``), so the
asker returns it without reading it back; too large a reply falls back to the table."""

from __future__ import annotations

import json
import select
from typing import Any

import psycopg
import pytest

from agent_messaging import AgentMessaging

from .helpers import AgentProcess, make_config

SDK = AgentMessaging[Any]


def reply_hints(dsn: str, asker: str, statements: list[str]) -> list[dict[str, Any]]:
    """Run ``statements`` and return the ``sync_reply`` hints ``asker`` was sent."""
    with (
        psycopg.connect(dsn, autocommit=True) as listen,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        row = listen.execute("SELECT amp.agent_channel(%s)", [asker]).fetchone()
        assert row is not None
        listen.execute(f'LISTEN "{row[0]}"')
        for statement in statements:
            conn.execute(statement)
        hints = []
        while select.select([listen.fileno()], [], [], 5)[0]:
            got = list(listen.notifies(timeout=0.5, stop_after=1))
            if not got:
                break
            hints += [json.loads(n.payload) for n in got]
            if any(h.get("message_type") == "sync_reply" for h in hints):
                break
    return [h for h in hints if h.get("message_type") == "sync_reply"]


def test_reply_hint_carries_content_unless_disabled_or_large(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT amp.register_organization('o')")
        conn.execute("SELECT amp.register_agent('a', 'o'), amp.register_agent('b', 'o')")
    ask = """SELECT request_id FROM amp.sync_send('a', 'b', '"q"')"""
    reply = """SELECT amp.sync_reply('b', 'a', '{"x": null, "y": [1, "two"]}')"""
    (carried,) = reply_hints(dsn, "a", [ask, reply])
    assert carried["reply"] == {"content": {"x": None, "y": [1, "two"]}}
    assert carried["reply_to"]
    off = "SET amp.notify_content = off"
    (plain,) = reply_hints(dsn, "a", [off, ask, reply])
    assert "reply" not in plain and plain["reply_to"]
    small = "SET amp.notify_content_bytes = 10"
    (large,) = reply_hints(dsn, "a", [small, ask, reply])
    assert "reply" not in large and large["reply_to"]


@pytest.mark.parametrize(("size", "setting"), [(10, "on"), (20000, "on"), (10, "off")])
async def test_send_and_wait_gets_the_reply_either_way(dsn: str, size: int, setting: str) -> None:
    """A reply small enough to travel in its hint, one too large for it, and one that
    may not travel in it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        dbname = conn.info.dbname
        conn.execute(f'ALTER DATABASE "{dbname}" SET amp.notify_content = {setting}')
    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        await sdk.register_organization("org1")
        await sdk.register_agent("alice", "org1")
        await sdk.register_agent("bob", "org1")
        proc = await AgentProcess.start(dsn, "handle", "bob", "--reply")
        try:
            await proc.expect("ready")
            for i in range(3):
                question = {"n": i, "pad": "x" * size}
                answer = await sdk.sync_conversation.send_and_wait("alice", "bob", question, 30)
                assert answer == {"answer": question}
        finally:
            await proc.stop()
