"""Delivery as the planning documents describe it (issue #10, item 1 and 4).

"The recipient's handler will be invoked immediately (if registered)": a handler in
the same process gets the message without a poll; leaving ``async with`` delivers
what is claimable first; registering a handler inside ``async with`` serves it; a
slow handler keeps its lease; a sender can wait for the outcome.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest

from agent_messaging import (
    AgentMessaging,
    AgentNotFoundError,
    DeliveryTimeoutError,
    HandlerExecutionError,
    MessageContext,
)

from .helpers import AgentProcess, make_config

WAIT = 60.0


async def setup(sdk: AgentMessaging[Any], *agents: str) -> None:
    await sdk.register_organization("org")
    for agent in agents:
        await sdk.register_agent(agent, "org")


async def test_same_process_handler_runs_before_the_block_closes(dsn: str) -> None:
    """The one-way example's shape: register inside ``async with``, send, leave."""
    got: list[Any] = []
    async with AgentMessaging[Any](make_config(dsn, poll_interval=30.0)) as sdk:
        await setup(sdk, "alice", "bob")

        @sdk.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            got.append(message)

        await sdk.one_way.send("alice", "bob", {"n": 1})
    assert got == [{"n": 1}]
    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        status = await sdk.db.fetch_value("SELECT delivery_status FROM amp.messages")
    assert status == "delivered"


async def test_same_process_delivery_needs_no_poll(dsn: str) -> None:
    """With a 30 s poll, the handler still runs at once (a poke, then the NOTIFY)."""
    async with AgentMessaging[Any](make_config(dsn, poll_interval=30.0)) as sdk:
        await setup(sdk, "alice", "bob")
        handled = asyncio.Event()

        @sdk.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            handled.set()

        await sdk.serve_handlers()
        await sdk.one_way.send("alice", "bob", {"n": 1})
        await asyncio.wait_for(handled.wait(), 10)  # far below the 30 s poll


async def test_close_drains_up_to_the_shutdown_timeout(dsn: str) -> None:
    """Everything already claimable is delivered on close; a handler that outlasts
    ``shutdown_timeout`` is given up and its message handed back (still pending)."""
    done: list[int] = []
    async with AgentMessaging[Any](make_config(dsn, shutdown_timeout=6.0)) as sdk:
        await setup(sdk, "alice", "bob")
        block = asyncio.Event()

        @sdk.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            if message["n"] == 99:
                await block.wait()  # never set
            done.append(message["n"])

        ids = [await sdk.one_way.send("alice", "bob", {"n": i}) for i in range(20)]
        stuck = await sdk.one_way.send("alice", "bob", {"n": 99})
    assert sorted(done) == list(range(20))
    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        rows = await sdk.db.fetch("SELECT id, delivery_status FROM amp.messages")
        leases = await sdk.db.fetch("SELECT message_id, claimed_by FROM amp.deliveries")
    status = {str(r["id"]): r["delivery_status"] for r in rows}
    assert all(status[str(i)] == "delivered" for i in ids)
    assert status[str(stuck)] == "pending"
    # handed back, not leased (the lease lives in amp.deliveries while it is pending)
    assert [(str(r["message_id"]), r["claimed_by"]) for r in leases] == [(str(stuck), None)]


async def test_registering_twice_inside_async_with_serves_both(dsn: str) -> None:
    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        await setup(sdk, "alice", "bob", "carol")
        got: asyncio.Queue[str] = asyncio.Queue()

        @sdk.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            got.put_nowait("bob")

        @sdk.register_handler("carol")
        async def carol(message: Any, context: MessageContext) -> None:
            got.put_nowait("carol")

        await sdk.one_way.send("alice", "bob", "hi")
        await sdk.one_way.send("alice", "carol", "hi")
        seen = {await asyncio.wait_for(got.get(), WAIT) for _ in range(2)}
        assert seen == {"bob", "carol"}
        served = await sdk.db.fetch_value(
            "SELECT array_agg(a.external_id ORDER BY a.external_id) FROM amp.worker_agents w "
            "JOIN amp.agents a ON a.id = w.agent_id"
        )
        assert served == ["bob", "carol"]


async def test_background_serving_errors_are_reported(dsn: str) -> None:
    async with AgentMessaging[Any](make_config(dsn)) as sdk:

        @sdk.register_handler("ghost")
        async def ghost(message: Any, context: MessageContext) -> None: ...

        await sdk.drain(WAIT)  # waits for the background serve to finish
        assert isinstance(sdk.serve_error, AgentNotFoundError)
        with pytest.raises(AgentNotFoundError):
            await sdk.serve_handlers()


async def test_handlers_registered_together_are_served_in_one_batch(dsn: str) -> None:
    """Many handlers registered inside ``async with`` in one go are served by one
    background task (not one task and three round trips each); an unknown agent
    among them fails alone: the others are served, its error is kept."""
    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        await setup(sdk, "alice", *(f"bob{i}" for i in range(50)))
        got: asyncio.Queue[str] = asyncio.Queue()
        for name in [*(f"bob{i}" for i in range(50)), "ghost"]:

            async def handler(message: Any, context: MessageContext) -> None:
                got.put_nowait(context.recipient_external_id)

            sdk.register_handler(name)(handler)
        assert len(sdk.handler_registry._serving) == 1
        await sdk.drain(WAIT)
        errors = sdk.handler_registry.errors
        assert len(errors) == 1 and isinstance(errors[0], AgentNotFoundError)
        assert "ghost" in str(errors[0])
        delivery = sdk.handler_registry.delivery
        assert delivery is not None and delivery.served == {f"bob{i}" for i in range(50)}
        await sdk.one_way.send("alice", "bob49", "hi")
        assert await asyncio.wait_for(got.get(), WAIT) == "bob49"
        # registered later (after the batch started): a batch of its own
        await sdk.register_agent("carol", "org")

        @sdk.register_handler("carol")
        async def carol(message: Any, context: MessageContext) -> None:
            got.put_nowait("carol")

        await sdk.drain(WAIT)
        assert "carol" in delivery.served and len(sdk.handler_registry.errors) == 1


async def test_auto_invoke_handlers_false_serves_only_on_request(dsn: str) -> None:
    """``auto_invoke_handlers=False``: registering does not serve; the message waits."""
    config = make_config(dsn, auto_invoke_handlers=False)
    got: list[Any] = []
    async with AgentMessaging[Any](config) as sdk:
        await setup(sdk, "alice", "bob")

        @sdk.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            got.append(message)

        sent = await sdk.one_way.send("alice", "bob", "later")
    assert got == []
    async with AgentMessaging[Any](config) as sdk:
        assert await sdk.db.fetch_value("SELECT count(*) FROM amp.worker_agents") == 0

        @sdk.register_handler("bob")
        async def bob_again(message: Any, context: MessageContext) -> None:
            got.append(message)

        await sdk.serve_handlers()
        await sdk.one_way.wait_delivered(sent, WAIT)
    assert got == ["later"]


async def test_wait_delivered_returns_once_delivered(dsn: str) -> None:
    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        await setup(sdk, "alice", "bob")
        release = asyncio.Event()

        @sdk.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            await release.wait()

        message_id = await sdk.one_way.send("alice", "bob", "x")
        waiter = asyncio.create_task(sdk.one_way.wait_delivered(message_id, WAIT))
        with pytest.raises(DeliveryTimeoutError):
            await sdk.one_way.wait_delivered(message_id, 0.5)
        assert not waiter.done()
        release.set()
        await asyncio.wait_for(waiter, WAIT)
        status = await sdk.db.fetch_value(
            "SELECT delivery_status FROM amp.messages WHERE id = $1", [message_id]
        )
        assert status == "delivered"


async def test_wait_delivered_raises_the_handlers_error_once_dead_lettered(dsn: str) -> None:
    config = make_config(dsn, delivery_max_attempts=3, delivery_backoff_base=0.05)
    async with AgentMessaging[Any](config) as sdk:
        await setup(sdk, "alice", "bob")

        @sdk.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            raise ValueError(f"cannot handle {message} (attempt {context.attempt})")

        message_id = await sdk.one_way.send("alice", "bob", "x")
        with pytest.raises(HandlerExecutionError) as caught:
            await sdk.one_way.wait_delivered(message_id, WAIT)
    assert caught.value.last_error == "ValueError: cannot handle x (attempt 3)"
    assert caught.value.attempts == 3 and caught.value.message_id == message_id


# -- leases: a slow handler runs once; a dead process's message runs elsewhere ----


async def plan_agent(dsn: str, *args: str) -> AgentProcess:
    return await AgentProcess.spawn(sys.executable, "-m", "tests.agents.plan_agent", dsn, *args)


async def test_handler_sleeping_three_leases_runs_exactly_once(sdk: Any) -> None:
    """Two healthy processes serve bob with a 2 s lease; bob's handler takes 6 s.
    The lease is extended while it runs, so the other process never takes it."""
    await setup(sdk, "alice", "bob")
    dsn = sdk.db.dsn
    workers = [await plan_agent(dsn, "bob", "--lease", "2", "--sleep", "6") for _ in range(2)]
    try:
        for worker in workers:
            await worker.expect("ready", WAIT)
        message_id = await sdk.one_way.send("alice", "bob", {"text": "slow"})
        await sdk.one_way.wait_delivered(message_id, WAIT)
        # a second run would have started by now (the lease expired twice over)
        attempts = await sdk.db.fetch_value(
            "SELECT attempts FROM amp.messages WHERE id = $1", [message_id]
        )
    finally:
        for worker in workers:
            await worker.stop()
    started = [e for w in workers for e in w.events if e["event"] == "started"]
    handled = [e for w in workers for e in w.events if e["event"] == "handled"]
    assert (len(started), len(handled), attempts) == (1, 1, 1), started


async def test_killed_process_message_is_rerun_elsewhere_after_the_lease(sdk: Any) -> None:
    await setup(sdk, "alice", "bob")
    dsn = sdk.db.dsn
    first = await plan_agent(dsn, "bob", "--lease", "2", "--block")
    second: AgentProcess | None = None
    try:
        await first.expect("ready", WAIT)
        message_id = await sdk.one_way.send("alice", "bob", {"text": "doomed"})
        started = await first.expect("started", WAIT)
        first.kill()
        await first.proc.wait()
        second = await plan_agent(dsn, "bob", "--lease", "2")
        rerun = await second.expect("handled", WAIT)
        await sdk.one_way.wait_delivered(message_id, WAIT)
    finally:
        await first.stop()
        if second is not None:
            await second.stop()
    assert started["attempt"] == 1 and rerun["attempt"] == 2
    assert rerun["id"] == str(message_id) and rerun["pid"] != started["pid"]


async def test_every_background_serving_error_is_kept(dsn: str) -> None:
    """Two handlers registered after the start fail to be served: both errors are
    kept (a later one does not overwrite an earlier one), and logged again at close
    if nobody asked for them."""
    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        for name in ("ghost", "phantom"):

            async def handler(message: Any, context: MessageContext) -> None: ...

            sdk.register_handler(name)(handler)

        await sdk.drain(WAIT)
        errors = sdk.handler_registry.errors
        assert len(errors) == 2 and all(isinstance(e, AgentNotFoundError) for e in errors)
        assert sdk.serve_error is errors[-1]
        assert "ghost" in str(errors[0]) and "phantom" in str(errors[1])
        with pytest.raises(AgentNotFoundError):
            await sdk.serve_handlers()
