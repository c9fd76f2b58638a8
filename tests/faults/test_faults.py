"""Faults of the server itself: a failed start, an outage, a freeze, restarts under
traffic. Each runs against a server of this module's own (see conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from agent_messaging import AgentMessaging, MessageContext
from agent_messaging.exceptions import (
    TRANSIENT_ERRORS,
    AgentMessagingError,
    ConversationTimeoutError,
    MeetingTimeoutError,
)

from ..helpers import make_config
from .conftest import OwnServer

SDK = AgentMessaging[Any]
ROUNDS = ("fast", "immediate")


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Re-check server-side state that no notification announces until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def count(dsn: str, query: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


async def setup_agents(sdk: SDK, *names: str) -> None:
    await sdk.register_organization("org1")
    for name in names:
        await sdk.register_agent(name, "org1")


async def test_a_failed_start_leaves_nothing_behind(own_server: OwnServer) -> None:
    dsn = own_server.new_database()
    own_server.stop("fast")
    try:
        sdk = AgentMessaging[Any](make_config(dsn, connect_timeout=2.0))
        with pytest.raises(AgentMessagingError, match="cannot connect"):
            await asyncio.wait_for(sdk.initialize(), 30)
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("amp-")]
    finally:
        own_server.start()
    # the dead SDK holds no connection, now that the server is back
    assert own_server.connections(dsn) == 0


async def test_a_sync_pair_converses_within_a_second_of_a_10s_outage(
    own_server: OwnServer,
) -> None:
    dsn = own_server.new_database()
    config = make_config(dsn, poll_interval=0.5, listener_check_interval=0.5)
    async with AgentMessaging[Any](config) as alice, AgentMessaging[Any](config) as bob:
        await setup_agents(alice, "alice", "bob")
        asking = asyncio.create_task(
            alice.sync_conversation.send_and_wait("alice", "bob", "q1", timeout=60)
        )

        async def asked(n: int) -> bool:
            return count(dsn, "SELECT count(*) FROM amp.awaiting_reply('bob')") == n

        await until(lambda: asked(1))
        own_server.stop("immediate")
        await asyncio.sleep(10)  # the outage itself, with the ask blocked in it
        assert not asking.done()
        own_server.start()
        loop = asyncio.get_running_loop()
        back = loop.time()
        await bob.sync_conversation.reply("bob", "alice", "a1")
        assert await asyncio.wait_for(asking, 30) == "a1"
        again = asyncio.create_task(
            alice.sync_conversation.send_and_wait("alice", "bob", "q2", timeout=60)
        )
        await until(lambda: asked(1))
        await bob.sync_conversation.reply("bob", "alice", "a2")
        assert await asyncio.wait_for(again, 30) == "a2"
        took = loop.time() - back
        print(f"a full exchange and a new one {took:.3f} s after the server returned")
        assert took < 1.0


async def test_a_frozen_server_every_call_returns_by_its_timeout(own_server: OwnServer) -> None:
    dsn = own_server.new_database()
    timeout = 2.0
    config = make_config(dsn, statement_timeout=timeout, connect_timeout=timeout)
    async with AgentMessaging[Any](config) as sdk:
        await setup_agents(sdk, "alice", "bob", "carol")
        # warm up: channels cached and LISTENed, a meeting where it is bob's turn
        await sdk.one_way.send("alice", "carol", "warm")
        meeting = await sdk.meeting.create_meeting("alice", ["alice", "bob"], turn_duration=None)
        attending = asyncio.create_task(sdk.meeting.attend_meeting("bob", meeting, timeout=30))
        await sdk.meeting.wait_until_ready(meeting, timeout=30)
        await sdk.meeting.start_meeting("alice", meeting, "open", next_speaker_external_id="bob")
        assert (await asyncio.wait_for(attending, 30)).your_turn
        await sdk.agent_channel("carol")

        loop = asyncio.get_running_loop()
        took: dict[str, float] = {}

        async def timed(name: str, call: Awaitable[Any]) -> Any:
            started = loop.time()
            try:
                return await call
            except AgentMessagingError as exc:
                return exc
            finally:
                took[name] = loop.time() - started

        waits = [
            asyncio.create_task(
                timed(
                    "send_and_wait",
                    sdk.sync_conversation.send_and_wait("alice", "bob", "q", timeout=timeout),
                )
            ),
            asyncio.create_task(
                timed(
                    "wait_for_message",
                    sdk.async_conversation.wait_for_message("carol", None, timeout=timeout),
                )
            ),
            asyncio.create_task(
                timed("wait_for_turn", sdk.meeting.wait_for_turn("alice", meeting, timeout))
            ),
        ]

        async def asked() -> bool:
            return count(dsn, "SELECT count(*) FROM amp.awaiting_reply('bob')") == 1

        await until(asked)
        # the waits started a moment ago; freeze now, and start the rest frozen
        frozen = own_server.freeze()
        try:
            calls = [
                timed("one_way.send", sdk.one_way.send("alice", "bob", "x")),
                timed("async send", sdk.async_conversation.send("alice", "bob", "x")),
                timed("get_agent", sdk.get_agent("alice")),
            ]
            results = await asyncio.wait_for(asyncio.gather(*waits, *calls), 30)
        finally:
            OwnServer.thaw(frozen)
        print({name: round(seconds, 3) for name, seconds in took.items()})
        assert isinstance(results[0], ConversationTimeoutError)
        assert results[1] is None
        assert isinstance(results[2], MeetingTimeoutError)
        assert all(isinstance(r, AgentMessagingError) for r in results[3:])
        assert all(seconds <= timeout + 0.5 for seconds in took.values()), took
        # thawed: the SDK works again, and nobody stays locked
        assert (await sdk.get_agent("alice")).external_id == "alice"

        async def unlocked() -> bool:
            return count(dsn, "SELECT count(*) FROM amp.awaiting_reply('bob')") == 0

        await until(unlocked)


class Traffic:
    """A sender, a sync pair, an inbox reader and a meeting, running until stopped;
    every send retried with its idempotency key after an error."""

    def __init__(self, sender: SDK, replier: SDK) -> None:
        self.sender = sender
        self.replier = replier
        self.stopping = asyncio.Event()
        self.one_way: dict[str, Any] = {}  # key -> id, acknowledged sends
        self.handled: list[Any] = []
        self.asked = 0
        self.answered = 0
        self.inbox_sent: dict[str, Any] = {}
        self.inbox_got: list[Any] = []
        self.spoken = 0
        self.errors = 0

    async def retry(self, call: Callable[[], Awaitable[Any]]) -> Any:
        while True:
            try:
                return await call()
            except TRANSIENT_ERRORS:
                self.errors += 1
                await asyncio.sleep(0.05)

    async def send_loop(self) -> None:
        for n in itertools.count():
            if self.stopping.is_set():
                return
            key = f"ow-{n}"
            self.one_way[key] = await self.retry(
                lambda n=n, key=key: self.sender.one_way.send(  # type: ignore[misc]
                    "alice", "bob", {"n": n}, idempotency_key=key
                )
            )

    async def sync_loop(self) -> None:
        for n in itertools.count():
            if self.stopping.is_set():
                return
            key = f"ask-{n}"
            answer = await self.retry(
                lambda n=n, key=key: self.sender.sync_conversation.send_and_wait(  # type: ignore[misc]
                    "carol", "dave", {"q": n}, timeout=30, idempotency_key=key
                )
            )
            assert answer == {"a": n}
            self.answered += 1

    async def inbox_loop(self) -> None:
        for n in itertools.count():
            if self.stopping.is_set():
                return
            key = f"in-{n}"
            self.inbox_sent[key] = await self.retry(
                lambda n=n, key=key: self.sender.async_conversation.send(  # type: ignore[misc]
                    "alice", "erin", {"n": n}, idempotency_key=key
                )
            )

    async def read_loop(self) -> None:
        while not self.stopping.is_set():
            got = await self.replier.async_conversation.wait_for_message("erin", None, timeout=0.5)
            if got is not None:
                self.inbox_got.append(got["n"])

    async def start_meeting(self) -> None:
        host, guest = self.sender, self.replier
        self.meeting = await host.meeting.create_meeting("alice", ["alice", "frank"], None)
        attending = asyncio.create_task(guest.meeting.attend_meeting("frank", self.meeting, 60))
        await host.meeting.wait_until_ready(self.meeting, timeout=60)
        await host.meeting.start_meeting(
            "alice", self.meeting, "go", next_speaker_external_id="frank"
        )
        assert (await attending).your_turn

    async def meeting_loop(self) -> None:
        host, guest = self.sender, self.replier
        meeting = self.meeting

        async def take_turns(sdk: SDK, name: str, first_wait: bool) -> None:
            if first_wait:
                await sdk.meeting.attend_meeting(name, meeting, 60)
            while True:
                if name == "alice" and self.stopping.is_set():
                    await self.retry(lambda: host.meeting.end_meeting("alice", meeting))
                    return
                try:
                    signal = await sdk.meeting.speak(name, meeting, {"n": self.spoken}, None, 60)
                except TRANSIENT_ERRORS:
                    # the outcome is unknown: whether it was said, the turn tells
                    self.errors += 1
                    signal = await sdk.meeting.wait_for_turn(name, meeting, 60)
                    if signal.your_turn and not signal.meeting_ended:
                        continue
                self.spoken += 1
                if signal.meeting_ended:
                    return

        await asyncio.gather(take_turns(guest, "frank", False), take_turns(host, "alice", True))


@pytest.mark.parametrize("mode", ROUNDS)
async def test_restart_under_traffic_loses_nothing(own_server: OwnServer, mode: str) -> None:
    dsn = own_server.new_database()
    config = make_config(dsn, poll_interval=0.5, listener_check_interval=0.5)
    async with AgentMessaging[Any](config) as sender, AgentMessaging[Any](config) as replier:
        await setup_agents(sender, "alice", "bob", "carol", "dave", "erin", "frank")
        traffic = Traffic(sender, replier)
        handled = asyncio.Event()

        @replier.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            traffic.handled.append(message["n"])
            handled.set()

        @replier.register_handler("dave")
        async def dave(message: Any, context: MessageContext) -> Any:
            return {"a": message["q"]}

        await replier.serve_handlers()
        await traffic.start_meeting()
        loops = [
            asyncio.create_task(loop())
            for loop in (
                traffic.send_loop,
                traffic.sync_loop,
                traffic.inbox_loop,
                traffic.read_loop,
                traffic.meeting_loop,
            )
        ]
        try:
            await asyncio.wait_for(handled.wait(), 30)  # traffic flows
            await until(lambda: asyncio.sleep(0, traffic.spoken > 0 and traffic.answered > 0))
            before = (len(traffic.one_way), traffic.answered, traffic.spoken)
            await asyncio.to_thread(own_server.restart, mode)
            # every process recovers by itself: each kind of traffic moves on
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while not all(
                a > b
                for a, b in zip(
                    (len(traffic.one_way), traffic.answered, traffic.spoken), before, strict=True
                )
            ):
                assert loop.time() < deadline, (before, traffic.__dict__)
                assert not any(t.done() for t in loops), [t for t in loops if t.done()]
                await asyncio.sleep(0.05)
        finally:
            traffic.stopping.set()
            done, pending = await asyncio.wait(loops, timeout=60)
            for task in pending:
                task.cancel()
        for task in done:
            task.result()  # no loop died of an error
        assert not pending
        # 0 acknowledged one-way messages lost, 0 stored twice, each handled
        stored = count(dsn, "SELECT count(*) FROM amp.messages WHERE message_type = 'one_way'")
        assert stored == len(traffic.one_way)
        assert (
            count(
                dsn,
                "SELECT count(*) FROM amp.messages WHERE message_type = 'one_way' "
                "AND idempotency_key IS NULL",
            )
            == 0
        )

        async def all_delivered() -> bool:
            return (
                count(
                    dsn,
                    "SELECT count(*) FROM amp.messages WHERE message_type = 'one_way' "
                    "AND delivery_status = 'delivered'",
                )
                == stored
            )

        await until(all_delivered, 60)
        assert set(traffic.handled) == set(range(stored))
        # the inbox: every acknowledged send stored once
        assert count(dsn, "SELECT count(*) FROM amp.messages WHERE message_type = 'async'") == len(
            traffic.inbox_sent
        )
        assert len(traffic.inbox_got) == len(set(traffic.inbox_got))
        # nobody stays locked
        assert count(dsn, "SELECT count(*) FROM amp.sessions WHERE status = 'waiting'") == 0
        print(
            f"{mode}: {stored} one-way, {traffic.answered} sync, {len(traffic.inbox_sent)} "
            f"inbox, {traffic.spoken} spoken, {traffic.errors} retried errors"
        )
        with contextlib.suppress(Exception):
            await replier.close()
