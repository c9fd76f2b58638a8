"""Concurrent one-way sends of one process are stored together: those that come while
one is in flight go in one transaction (amp.send_one_way_many) when it returns, and
each caller still gets its own id, or its own error."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import psycopg
import pytest

from agent_messaging import AgentMessaging, AgentNotFoundError, InvalidInputError, MessageContext

from .helpers import AgentProcess, make_config

SDK = AgentMessaging[Any]


async def setup(sdk: SDK) -> None:
    await sdk.register_organization("org1")
    for name in ("alice", "bob", "carol"):
        await sdk.register_agent(name, "org1")


def transactions(dsn: str) -> tuple[int, int]:
    """(messages, transactions that stored them): created_at is the storing
    transaction's start (now()), shared by what it stored (xmin is not: an
    acknowledgement updates the row)."""
    with psycopg.connect(dsn) as sql:
        row = sql.execute(
            "SELECT count(*), count(DISTINCT created_at) FROM amp.messages"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def stored(dsn: str, message: UUID) -> tuple[str, str, Any, Any]:
    with psycopg.connect(dsn) as sql:
        row = sql.execute(
            "SELECT s.external_id, r.external_id, m.content, m.metadata FROM amp.messages m"
            " JOIN amp.agents s ON s.id = m.sender_id JOIN amp.agents r ON r.id = m.recipient_id"
            " WHERE m.id = %s",
            [message],
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2], row[3]


async def test_concurrent_sends_share_transactions_and_each_gets_its_id(dsn: str) -> None:
    async with SDK(make_config(dsn)) as sdk:
        await setup(sdk)
        ids = await asyncio.gather(
            *(sdk.one_way.send("alice", "bob" if i % 2 else "carol", {"n": i}) for i in range(40))
        )
        assert len(set(ids)) == 40
        for i, message in enumerate(ids):
            assert stored(dsn, message) == ("alice", "bob" if i % 2 else "carol", {"n": i}, {})
        messages, txs = transactions(dsn)
        # the first went alone; the 39 that came while it was in flight, together
        assert (messages, txs) == (40, 2)


async def test_each_caller_gets_its_own_error(dsn: str) -> None:
    """A batch the database refuses (an unknown agent, a message to oneself) stores
    nothing: each of its sends is made again alone, and only the bad ones fail."""
    async with SDK(make_config(dsn)) as sdk:
        await setup(sdk)
        results = await asyncio.gather(
            sdk.one_way.send("alice", "bob", {"n": 0}),  # in flight: the others wait
            sdk.one_way.send("alice", "bob", {"n": 1}),
            sdk.one_way.send("alice", "nobody", {"n": 2}),
            sdk.one_way.send("alice", "alice", {"n": 3}),
            sdk.one_way.send("alice", "carol", {"n": 4}),
            return_exceptions=True,
        )
        assert isinstance(results[2], AgentNotFoundError)
        assert isinstance(results[3], InvalidInputError)
        for n in (0, 1, 4):
            assert isinstance(results[n], UUID)
            assert stored(dsn, results[n])[2] == {"n": n}
        assert transactions(dsn)[0] == 3  # each stored once


async def test_senders_and_metadata_are_kept_apart(dsn: str) -> None:
    async with SDK(make_config(dsn)) as sdk:
        await setup(sdk)
        ids = await asyncio.gather(
            sdk.one_way.send("alice", "bob", {"n": 0}),
            sdk.one_way.send("alice", "bob", {"n": 1}, metadata={"k": 1}),
            sdk.one_way.send("carol", "bob", {"n": 2}),
            sdk.one_way.send("alice", "bob", {"n": 3}, metadata={"k": 1}),
            sdk.one_way.send("alice", "bob", {"n": 4}),
        )
        assert [stored(dsn, i) for i in ids] == [
            ("alice", "bob", {"n": 0}, {}),
            ("alice", "bob", {"n": 1}, {"k": 1}),
            ("carol", "bob", {"n": 2}, {}),
            ("alice", "bob", {"n": 3}, {"k": 1}),
            ("alice", "bob", {"n": 4}, {}),
        ]
        # the first alone; then one transaction per sender and metadata
        assert transactions(dsn) == (5, 4)


@pytest.mark.parametrize("coalesce", [True, False])
async def test_coalesced_sends_reach_a_handler_in_another_process(dsn: str, coalesce: bool) -> None:
    async with SDK(make_config(dsn, coalesce_sends=coalesce)) as sdk:
        await setup(sdk)
        proc = await AgentProcess.start(dsn, "handle", "bob")
        try:
            await proc.expect("ready")
            sent = await asyncio.gather(
                *(sdk.one_way.send("alice", "bob", {"n": i}) for i in range(30))
            )
            got: set[UUID] = set()
            while len(got) < len(sent):
                got.add(UUID((await proc.expect("handled", timeout=30))["id"]))
            assert got == set(sent)
        finally:
            await proc.stop()
        messages, txs = transactions(dsn)
        assert messages == 30
        assert (txs < 30) if coalesce else (txs == 30)


async def test_idempotent_and_transactional_sends_go_alone(dsn: str) -> None:
    async with SDK(make_config(dsn)) as sdk:
        await setup(sdk)
        first, again, other = await asyncio.gather(
            sdk.one_way.send("alice", "bob", {"n": 0}, idempotency_key="k0"),
            sdk.one_way.send("alice", "bob", {"n": 0}, idempotency_key="k0"),
            sdk.one_way.send("alice", "bob", {"n": 1}, idempotency_key="k1"),
        )
        assert first == again != other
        assert transactions(dsn) == (2, 2)
        async with sdk.transaction() as tx:
            await asyncio.gather(*(tx.one_way.send("alice", "carol", {"n": i}) for i in range(3)))
        assert transactions(dsn) == (5, 3)


async def test_a_send_cancelled_while_it_waits_is_not_stored(dsn: str) -> None:
    """A caller cancelled while its send waits for the one in flight: its message
    never went out, so it is not stored; the others' sends are not disturbed."""
    async with SDK(make_config(dsn)) as sdk:
        await setup(sdk)
        got: list[int] = []
        done = asyncio.Event()

        @sdk.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            got.append(message["n"])
            if len(got) >= 2:
                done.set()

        await sdk.serve_handlers()
        first = asyncio.ensure_future(sdk.one_way.send("alice", "bob", {"n": 0}))
        doomed = asyncio.ensure_future(sdk.one_way.send("alice", "bob", {"n": 1}))
        last = asyncio.ensure_future(sdk.one_way.send("alice", "bob", {"n": 2}))
        # runs after the three tasks' first steps: the first is in flight, the others wait
        asyncio.get_running_loop().call_soon(doomed.cancel)
        await first
        await last
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await asyncio.wait_for(done.wait(), 30)
        assert set(got) == {0, 2}
        assert transactions(dsn) == (2, 2)
