"""One-way messages: durable push delivery to a handler in any process."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from agent_messaging import (
    AgentMessaging,
    AgentNotFoundError,
    InvalidInputError,
    MessageContext,
)

from .helpers import AgentProcess, make_config, wait_delivered

SDK = AgentMessaging[dict[str, object]]


@pytest.fixture
async def pair(sdk: SDK) -> SDK:
    await sdk.register_organization("org1", "Org One")
    await sdk.register_agent("alice", "org1", "Alice")
    await sdk.register_agent("bob", "org1", "Bob")
    return sdk


def handled(procs: list[AgentProcess]) -> list[int]:
    """Every n the processes reported handled so far (events taken by ``expect``
    included: a process may handle messages before it prints "ready")."""
    return [e["content"]["n"] for p in procs for e in p.events if e["event"] == "handled"]


async def handled_ns(
    procs: list[AgentProcess], want: int | set[int], timeout: float = 60
) -> list[int]:
    """Wait until every n of ``want`` (a set, or ``range(want)``) was handled by one
    of the processes; returns every n handled, duplicates included."""
    target = set(range(want)) if isinstance(want, int) else want
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not target <= set(handled(procs)) and loop.time() < deadline:
        # any new line from any process (the reader task records it in .events)
        waits = [asyncio.create_task(p.next_event(deadline - loop.time())) for p in procs]
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()  # raises if a process died
    seen = handled(procs)
    assert target <= set(seen), f"not handled: {sorted(target - set(seen))[:10]}"
    return seen


async def test_handler_in_another_process(pair: SDK, dsn: str) -> None:
    proc = await AgentProcess.start(dsn, "handle", "bob")
    try:
        await proc.expect("ready")
        message_id = await pair.one_way.send("alice", "bob", {"n": 1}, metadata={"k": "v"})
        event = await proc.expect("handled")
    finally:
        await proc.stop()
    assert event["content"] == {"n": 1}
    context = event["context"]
    assert context["message_id"] == str(message_id)
    assert (context["sender_external_id"], context["sender_name"]) == ("alice", "Alice")
    assert (context["recipient_external_id"], context["recipient_name"]) == ("bob", "Bob")
    assert context["message_type"] == "one_way"
    assert context["requires_reply"] is False and context["is_meeting_message"] is False
    assert context["metadata"] == {"k": "v"} and context["attempt"] == 1


class Note(BaseModel):
    title: str
    priority: int


async def test_content_is_validated_back_into_the_message_type(dsn: str) -> None:
    received: asyncio.Queue[tuple[Note, MessageContext]] = asyncio.Queue()
    async with AgentMessaging[Note](make_config(dsn)) as sdk:
        await sdk.register_organization("org1")
        await sdk.register_agent("alice", "org1")
        await sdk.register_agent("bob", "org1")

        @sdk.register_handler("bob")
        async def on_note(message: Note, context: MessageContext) -> None:
            received.put_nowait((message, context))

        await sdk.serve_handlers()
        await sdk.one_way.send("alice", "bob", Note(title="hello", priority=2))
        message, context = await asyncio.wait_for(received.get(), 30)
    assert message == Note(title="hello", priority=2)
    assert context.sender_external_id == "alice"


async def test_sent_while_recipient_is_down_is_delivered_when_it_starts(
    pair: SDK, dsn: str
) -> None:
    for i in range(3):
        await pair.one_way.send("alice", "bob", {"n": i})
    proc = await AgentProcess.start(dsn, "handle", "bob")
    try:
        assert sorted(await handled_ns([proc], 3)) == [0, 1, 2]
    finally:
        await proc.stop()


async def test_killed_handler_process_loses_nothing(pair: SDK, dsn: str) -> None:
    """SIGKILL in the middle of a handler: after the lease expires another process
    delivers again, and none of a batch of 200 is lost."""
    first = await AgentProcess.start(dsn, "--lease", "1.5", "handle", "bob", "--block-on", "0")
    second: AgentProcess | None = None
    try:
        await first.expect("ready")
        ids = [await pair.one_way.send("alice", "bob", {"n": i}) for i in range(200)]
        while True:  # wait until the first process is stuck inside the handler of n=0
            event = await first.next_event()
            if event["event"] == "started" and event["content"] == {"n": 0}:
                break
        first.kill()
        await first.proc.wait()
        await first.drain()
        handled_by_first = {e["content"]["n"] for e in first.events if e["event"] == "handled"}
        assert 0 not in handled_by_first

        second = await AgentProcess.start(dsn, "--lease", "1.5", "handle", "bob")
        await second.expect("ready")
        # at least once: the second may repeat what the first handled but never acked
        await handled_ns([second], set(range(200)) - handled_by_first)
        redelivered = [
            e for e in second.events if e["event"] == "handled" and e["content"] == {"n": 0}
        ]
        assert redelivered[0]["context"]["attempt"] == 2
        outcome = await wait_delivered(pair, "alice", ids)
        assert set(outcome.values()) == {"delivered"}
    finally:
        first.kill()
        if second is not None:
            await second.stop()
    counts = await pair.db.fetch(
        "SELECT delivery_status, count(*) AS n FROM amp.messages GROUP BY 1"
    )
    assert {r["delivery_status"]: r["n"] for r in counts} == {"delivered": 200}


async def test_processes_serving_one_agent_share_without_double_delivery(
    pair: SDK, dsn: str
) -> None:
    procs = [await AgentProcess.start(dsn, "handle", "bob") for _ in range(2)]
    try:
        for proc in procs:
            await proc.expect("ready")
        for i in range(100):
            await pair.one_way.send("alice", "bob", {"n": i})
        seen = await handled_ns(procs, 100)
    finally:
        for proc in procs:
            await proc.stop()
    assert sorted(seen) == list(range(100)), "a message was delivered twice"


async def handler_sdk(dsn: str, **config: Any) -> SDK:
    sdk = AgentMessaging[dict[str, object]](make_config(dsn, delivery_backoff_base=0.05, **config))
    await sdk.initialize()
    return sdk


async def test_handler_failing_twice_is_invoked_three_times(pair: SDK, dsn: str) -> None:
    calls: asyncio.Queue[int] = asyncio.Queue()
    worker = await handler_sdk(dsn, delivery_max_attempts=5)

    @worker.register_handler("bob")
    async def flaky(message: dict[str, object], context: MessageContext) -> None:
        calls.put_nowait(context.attempt)
        if context.attempt < 3:
            raise RuntimeError(f"flaky {context.attempt}")

    await worker.serve_handlers()
    message_id = await pair.one_way.send("alice", "bob", {"n": 1})
    attempts = [await asyncio.wait_for(calls.get(), 30) for _ in range(3)]
    await worker.close()  # lets the running delivery finish and record its outcome
    assert attempts == [1, 2, 3] and calls.empty()
    row = await pair.db.fetch_one(
        "SELECT delivery_status, attempts, last_error FROM amp.messages WHERE id = $1",
        [message_id],
    )
    assert row == {
        "delivery_status": "delivered",
        "attempts": 3,
        "last_error": "RuntimeError: flaky 2",
    }


async def test_handler_that_always_fails_ends_in_failed_deliveries(pair: SDK, dsn: str) -> None:
    calls: asyncio.Queue[int] = asyncio.Queue()
    worker = await handler_sdk(dsn, delivery_max_attempts=3)

    @worker.register_handler("bob")
    async def broken(message: dict[str, object], context: MessageContext) -> None:
        calls.put_nowait(context.attempt)
        raise ValueError("cannot handle this")

    await worker.serve_handlers()
    message_id = await pair.one_way.send("alice", "bob", {"n": 1})
    attempts = [await asyncio.wait_for(calls.get(), 30) for _ in range(3)]
    await worker.close()
    assert attempts == [1, 2, 3] and calls.empty()
    failed = await pair.db.fetch("SELECT * FROM amp.failed_deliveries")
    assert len(failed) == 1
    assert failed[0]["message_id"] == str(message_id)
    assert (failed[0]["sender"], failed[0]["recipient"], failed[0]["attempts"]) == (
        "alice",
        "bob",
        3,
    )
    assert failed[0]["last_error"] == "ValueError: cannot handle this"


async def test_bad_input_raises_and_stores_nothing(pair: SDK, dsn: str) -> None:
    with pytest.raises(AgentNotFoundError):
        await pair.one_way.send("alice", "nobody", {"n": 1})
    with pytest.raises(AgentNotFoundError):
        await pair.one_way.send("nobody", "bob", {"n": 1})
    with pytest.raises(InvalidInputError):
        await pair.one_way.send("", "bob", {"n": 1})
    with pytest.raises(InvalidInputError, match="itself"):
        await pair.one_way.send("alice", "alice", {"n": 1})
    with pytest.raises(InvalidInputError, match="serialisable"):
        await pair.one_way.send("alice", "bob", {"n": object()})
    async with AgentMessaging[Any](make_config(dsn, max_message_bytes=100)) as small:
        with pytest.raises(InvalidInputError, match="limit"):
            await small.one_way.send("alice", "bob", "x" * 200)
    assert await pair.db.fetch_value("SELECT count(*) FROM amp.messages") == 0


def test_sql_enforces_content_limit_for_every_client(
    sql: psycopg.Connection[tuple[object, ...]],
) -> None:
    sql.execute("SELECT amp.register_organization('o')")
    sql.execute("SELECT amp.register_agent('a', 'o'), amp.register_agent('b', 'o')")
    # the limit lives in amp.settings (an administrator's table), not in a session
    # setting a caller could raise
    sql.execute("INSERT INTO amp.settings (key, value) VALUES ('max_message_bytes', '64')")
    sql.execute("SET amp.max_content_bytes = '1000000000'")
    with pytest.raises(psycopg.Error) as failure:
        sql.execute("SELECT amp.send_one_way('a', 'b', to_jsonb(repeat('x', 100)))")
    assert failure.value.sqlstate == "AM001"
    assert "more than the limit of 64" in str(failure.value)
    assert sql.execute("SELECT count(*) FROM amp.messages").fetchone() == (0,)


async def test_serving_process_is_online_until_it_closes(pair: SDK, dsn: str) -> None:
    import os

    worker = await handler_sdk(dsn)

    @worker.register_handler("bob")
    async def bob(message: dict[str, object], context: MessageContext) -> None:
        return None

    await worker.serve_handlers()
    online = await pair.db.fetch("SELECT agent, pid FROM amp.online_agents")
    assert online == [{"agent": "bob", "pid": os.getpid()}]
    await worker.close()
    assert await pair.db.fetch("SELECT agent FROM amp.online_agents") == []


async def test_one_way_sent_from_psql_reaches_a_handler_process(pair: SDK, dsn: str) -> None:
    from .helpers import psql

    proc = await AgentProcess.start(dsn, "handle", "bob")
    try:
        await proc.expect("ready")
        psql(
            dsn,
            """SELECT amp.send_one_way('alice', 'bob', '{"from": "psql"}', '{"via": "sql"}');""",
        )
        event = await proc.expect("handled")
    finally:
        await proc.stop()
    assert event["content"] == {"from": "psql"}
    assert event["context"]["sender_external_id"] == "alice"
    assert event["context"]["metadata"] == {"via": "sql"}


@pytest.mark.parametrize("prefetch", [0, 3])
async def test_prefetch_bounds_what_runs_and_what_is_leased(dsn: str, prefetch: int) -> None:
    """handler_concurrency bounds the handlers running at once; delivery_prefetch how
    many more claimed messages wait in the process (leased, so no other process
    takes them). Released handlers let the waiting ones run, oldest first."""
    config = make_config(dsn, handler_concurrency=2, delivery_prefetch=prefetch)
    async with AgentMessaging[Any](config) as sdk:
        await sdk.register_organization("org1")
        for name in ("alice", "bob"):
            await sdk.register_agent(name, "org1", name)
        release = asyncio.Event()
        two_running = asyncio.Event()
        all_started = asyncio.Event()
        started: list[int] = []
        running = 0
        most = 0

        @sdk.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            started.append(message["i"])
            if running == 2:
                two_running.set()
            if len(started) == 10:
                all_started.set()
            try:
                await release.wait()
            finally:
                running -= 1

        for i in range(10):  # all pending before the worker's first claim
            await sdk.one_way.send("alice", "bob", {"i": i})
        await sdk.serve_handlers()
        await asyncio.wait_for(two_running.wait(), 30)
        with psycopg.connect(dsn) as conn:
            leased = conn.execute(
                "SELECT count(*) FROM amp.deliveries WHERE claimed_by IS NOT NULL"
            ).fetchone()
        assert leased == (2 + prefetch,)
        assert most == 2 and started == [0, 1]
        release.set()
        await asyncio.wait_for(all_started.wait(), 30)
        assert most == 2
        assert started == list(range(10))
