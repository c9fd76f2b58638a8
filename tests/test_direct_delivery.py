"""Direct delivery: a pushed message is handed to a present worker as it is stored and
runs from its hint, without a claim; a worker that is gone, full or deaf is never the
reason a message waits for a lease to expire."""

from __future__ import annotations

import asyncio
import signal
from typing import Any
from uuid import UUID

import psycopg
import pytest

from agent_messaging import AgentMessaging, MessageContext

from .helpers import AgentProcess, make_config

SDK = AgentMessaging[Any]


async def until(check: Any, timeout: float = 30.0) -> Any:
    """Poll ``check()`` (state no notification announces) until it is truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = check()
        if found:
            return found
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.02)


def handed_to(sql: psycopg.Connection[Any], message: UUID) -> Any:
    """The worker a message was handed to as it was stored (None: it was claimed)."""
    row = sql.execute("SELECT claimed_by FROM amp.messages WHERE id = %s", [message]).fetchone()
    assert row is not None
    return row[0]


async def direct_workers(sql: psycopg.Connection[Any], n: int) -> None:
    """Wait until ``n`` workers have asked for direct delivery (amp.hold_worker)."""
    await until(
        lambda: sql.execute(
            "SELECT count(*) = %s FROM amp.workers WHERE direct_lease IS NOT NULL", [n]
        ).fetchone()[0]
    )


async def test_a_message_runs_from_its_hint(dsn: str) -> None:
    async with SDK(make_config(dsn)) as sdk:
        await sdk.register_organization("org1")
        for name in ("alice", "bob"):
            await sdk.register_agent(name, "org1", name.title())
        proc = await AgentProcess.start(dsn, "--lease", "60", "handle", "bob")
        try:
            await proc.expect("ready")
            with psycopg.connect(dsn, autocommit=True) as sql:
                worker = await until(
                    lambda: sql.execute(
                        "SELECT id FROM amp.workers WHERE direct_lease IS NOT NULL"
                    ).fetchone()
                )
                sent = await sdk.one_way.send("alice", "bob", {"n": 1}, metadata={"m": 1})
                handled = await proc.expect("handled")
                assert handled["content"] == {"n": 1}
                context = handled["context"]
                assert (context["sender_external_id"], context["sender_name"]) == ("alice", "Alice")
                assert (context["recipient_external_id"], context["recipient_name"]) == (
                    "bob",
                    "Bob",
                )
                assert (context["metadata"], context["attempt"]) == ({"m": 1}, 1)
                assert handed_to(sql, sent) == worker[0]
                await until(
                    lambda: sql.execute(
                        "SELECT delivery_status = 'delivered' AND attempts = 1"
                        " FROM amp.messages WHERE id = %s",
                        [sent],
                    ).fetchone()[0]
                )
                assert sql.execute("SELECT count(*) FROM amp.deliveries").fetchone() == (0,)
        finally:
            await proc.stop()


@pytest.mark.parametrize("killed", ["hub", "client"])
async def test_a_killed_worker_is_handed_nothing(dsn: str, killed: str) -> None:
    """The worker's presence is an advisory lock on the LISTEN connection that carries
    its hints (the host's hub's, shared): it goes with the hub's connection, and the hub
    lets go of a client's when the client's socket closes. Once the killed process is
    gone, every message goes to the live worker at once (the lease, 60 s, would
    otherwise hold it back)."""
    async with SDK(make_config(dsn)) as sdk:
        await sdk.register_organization("org1")
        for name in ("alice", "bob"):
            await sdk.register_agent(name, "org1")
        first = await AgentProcess.start(dsn, "--lease", "60", "handle", "bob")
        assert (await first.expect("ready"))["role"] == "hub"
        second = await AgentProcess.start(dsn, "--lease", "60", "handle", "bob")
        assert (await second.expect("ready"))["role"] == "client"
        doomed, alive = (first, second) if killed == "hub" else (second, first)
        try:
            with psycopg.connect(dsn, autocommit=True) as sql:

                def present() -> int:
                    # workers whose advisory lock (amp.hold_worker) is held
                    row = sql.execute(
                        "SELECT count(*) FROM amp.workers w JOIN pg_locks l"
                        " ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                        " AND ((l.classid::bigint << 32) | l.objid::bigint)"
                        " = hashtextextended('amp.worker:' || w.id::text, 0)"
                    ).fetchone()
                    return int(row[0]) if row else 0

                await until(lambda: present() == 2)
                doomed.proc.send_signal(signal.SIGKILL)
                await doomed.proc.wait()
                # its lock goes (and, for a hub, the live worker's comes back on the
                # next hub's connection)
                await until(lambda: present() == 1)
                sent = [await sdk.one_way.send("alice", "bob", {"n": i}) for i in range(6)]
                got = set()
                while len(got) < len(sent):
                    event = await alive.expect("handled", timeout=20)
                    got.add(UUID(event["id"]))
                assert got == set(sent)
        finally:
            await alive.stop()
            await doomed.stop()


async def test_what_a_lost_connection_announced_is_handed_back(
    dsn: str, sql: psycopg.Connection[Any]
) -> None:
    """A message leased to the worker whose hint it never saw (it went with a lost
    LISTEN connection) is handed back by the catch-up and runs, long before its lease
    (an hour) would have expired."""
    async with SDK(make_config(dsn, delivery_lease=3600.0)) as sdk:
        await sdk.register_organization("org1")
        for name in ("alice", "bob"):
            await sdk.register_agent(name, "org1")
        got: asyncio.Queue[Any] = asyncio.Queue()

        @sdk.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            got.put_nowait(message)

        await sdk.serve_handlers()
        assert sdk.handler_registry.delivery is not None
        worker = sdk.handler_registry.delivery.worker_id
        assert worker is not None
        # as if handed to the worker over a connection that died before its hint
        # arrived: stored without a hint (no amp function), then leased to the worker
        sql.execute(
            "INSERT INTO amp.messages (message_type, sender_id, recipient_id, content,"
            " delivery_status) SELECT 'one_way', a.id, b.id, '{\"unseen\": true}', 'pending'"
            " FROM amp.agents a, amp.agents b WHERE a.external_id = 'alice'"
            " AND b.external_id = 'bob'"
        )
        sql.execute(
            "UPDATE amp.deliveries SET claimed_by = %s, attempts = 1,"
            " claim_expires_at = now() + interval '1 hour'",
            [worker],
        )
        listener = await sdk.dispatcher.backend_pid()
        sql.execute("SELECT pg_terminate_backend(%s)", [listener])
        assert await asyncio.wait_for(got.get(), 30) == {"unseen": True}
        # and it is present again: the next message is handed to it
        sent = await sdk.one_way.send("alice", "bob", {"after": True})
        assert await asyncio.wait_for(got.get(), 30) == {"after": True}
        assert handed_to(sql, sent) == worker


async def test_a_full_worker_hands_back_what_it_cannot_run(dsn: str) -> None:
    """A worker whose one slot is taken (carol's handler blocks) is handed bob's message
    anyway (bob had nothing pending): it hands it back and the other worker serving bob
    runs it while carol's handler still blocks."""
    config = make_config(dsn, handler_concurrency=1, delivery_prefetch=0, delivery_lease=60.0)
    async with SDK(config) as sdk:
        await sdk.register_organization("org1")
        for name in ("alice", "bob", "carol"):
            await sdk.register_agent(name, "org1")
        release = asyncio.Event()
        carol_started = asyncio.Event()
        bob_here: list[Any] = []

        @sdk.register_handler("carol")
        async def carol(message: Any, context: MessageContext) -> None:
            carol_started.set()
            await release.wait()

        @sdk.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            bob_here.append(message)

        await sdk.serve_handlers()
        other = await AgentProcess.start(dsn, "--lease", "60", "handle", "bob")
        try:
            await other.expect("ready")
            with psycopg.connect(dsn, autocommit=True) as sql:
                await direct_workers(sql, 2)
            await sdk.one_way.send("alice", "carol", "block")
            await asyncio.wait_for(carol_started.wait(), 30)
            # bob's messages go to either worker; this one handles none while full
            for i in range(4):
                await sdk.one_way.send("alice", "bob", {"n": i})
            handled = set()
            while len(handled) < 4:
                event = await other.expect("handled", timeout=30)
                handled.add(event["content"]["n"])
            assert handled == {0, 1, 2, 3} and bob_here == []
        finally:
            release.set()
            await other.stop()


async def test_a_hint_too_large_to_hand_over_is_claimed_at_once(dsn: str) -> None:
    """A message whose hint would not fit a NOTIFY payload (content, names and ids
    past 6500 bytes) is not handed over: it waits to be claimed, and is claimed at
    once, not once a lease it never had expires (60 s here)."""
    async with SDK(make_config(dsn)) as sdk:
        await sdk.register_organization("org1")
        long_name = "é" * 1000  # 2000 bytes
        for name in ("alice", "bob"):
            await sdk.register_agent(name, "org1", long_name)
        proc = await AgentProcess.start(dsn, "--lease", "60", "handle", "bob")
        try:
            await proc.expect("ready")
            with psycopg.connect(dsn, autocommit=True) as sql:
                await direct_workers(sql, 1)
                sent = await sdk.one_way.send("alice", "bob", {"text": "x" * 3000})
                handled = await proc.expect("handled", timeout=20)
                assert UUID(handled["id"]) == sent
                assert handed_to(sql, sent) is None  # claimed
        finally:
            await proc.stop()
