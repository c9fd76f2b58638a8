"""The notification dispatcher: routing, run-time subscriptions, reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent_messaging import AgentMessaging, AgentNotFoundError, ConnectionLostError
from agent_messaging.dispatcher import AnyNotification, Outcome
from agent_messaging.notifications import MessageStored, Unknown

from .helpers import make_config

SDK = AgentMessaging[dict[str, object]]
PAYLOAD = (
    '{"kind":"message","message_id":"00000000-0000-0000-0000-000000000001",'
    '"message_type":"one_way"}'
)


class Inbox:
    """Collects notifications and lets a test await the next one."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, AnyNotification]] = asyncio.Queue()

    def __call__(self, channel: str, notification: AnyNotification) -> None:
        self.queue.put_nowait((channel, notification))

    async def next(self, timeout: float = 10.0) -> tuple[str, AnyNotification]:
        return await asyncio.wait_for(self.queue.get(), timeout)


@pytest.fixture(params=[True, False], ids=["shared", "own"])
async def either(request: pytest.FixtureRequest, dsn: str) -> AsyncIterator[SDK]:
    """An SDK that shares the host's listener (the default), then one that has a
    listener of its own (``share_listener=False``): the dispatcher's guarantees hold
    both ways."""
    async with AgentMessaging[dict[str, object]](
        make_config(dsn, share_listener=request.param)
    ) as instance:
        yield instance


async def listened(sdk: SDK, channel: str) -> bool:
    channels = await sdk.dispatcher.listening_channels()
    assert channels is not None
    return channel in channels


async def notify(sdk: SDK, channel: str, payload: str = PAYLOAD) -> None:
    await sdk.db.execute("SELECT pg_notify($1, $2)", [channel, payload])


async def test_routes_parsed_payloads_to_subscribers(either: SDK) -> None:
    sdk = either
    inbox = Inbox()
    await sdk.dispatcher.subscribe(["amp_test_a", "amp_test_b"], inbox)
    await notify(sdk, "amp_test_b")
    channel, notification = await inbox.next()
    assert channel == "amp_test_b"
    assert isinstance(notification, MessageStored) and notification.message_type == "one_way"
    await notify(sdk, "amp_test_a", '{"kind":"from_the_future"}')
    assert await inbox.next() == ("amp_test_a", Unknown(kind="from_the_future"))


async def test_channels_added_after_start_are_heard(either: SDK) -> None:
    sdk = either
    first, second = Inbox(), Inbox()
    await sdk.dispatcher.subscribe(["amp_test_first"], first)
    await notify(sdk, "amp_test_first")
    await first.next()
    await sdk.dispatcher.subscribe(["amp_test_second"], second)
    await notify(sdk, "amp_test_second")
    assert (await second.next())[0] == "amp_test_second"


async def test_unsubscribe_stops_routing(either: SDK) -> None:
    sdk = either
    kept, dropped = Inbox(), Inbox()
    await sdk.dispatcher.subscribe(["amp_test_c"], kept)
    await sdk.dispatcher.subscribe(["amp_test_c"], dropped)
    await sdk.dispatcher.unsubscribe(["amp_test_c"], dropped)
    await notify(sdk, "amp_test_c")
    await kept.next()
    assert dropped.queue.empty()
    # unused, the channel stays LISTENed (the next waiter on it needs no round trip)
    # but nothing is routed to the callbacks that left
    await sdk.dispatcher.unsubscribe(["amp_test_c"], kept)
    assert not sdk.dispatcher.subscribed("amp_test_c")
    assert await listened(sdk, "amp_test_c")
    probe = Inbox()
    await sdk.dispatcher.subscribe(["amp_test_probe"], probe)
    await notify(sdk, "amp_test_c")
    await notify(sdk, "amp_test_probe")
    await probe.next()  # notifications arrive in order: amp_test_c's was routed first
    assert kept.queue.empty() and dropped.queue.empty()
    # a channel that will not be used again can be UNLISTENed
    await sdk.dispatcher.subscribe(["amp_test_c"], kept)
    await sdk.dispatcher.unsubscribe(["amp_test_c"], kept, keep_listening=False)
    assert not await listened(sdk, "amp_test_c")


async def test_health_check_round_trip(either: SDK) -> None:
    sdk = either
    assert not await sdk.dispatcher.ping(timeout=5.0)  # nobody subscribed: not listening
    await sdk.dispatcher.subscribe(["amp_test_ping"], Inbox())
    assert await sdk.dispatcher.ping(timeout=5.0)


async def test_survives_terminated_backend(either: SDK) -> None:
    sdk = either
    """pg_terminate_backend on the listener: it reconnects, re-LISTENs every channel,
    runs the catch-up callbacks, and a notification sent afterwards arrives."""
    inbox = Inbox()
    caught_up = asyncio.Event()

    async def catch_up() -> None:
        caught_up.set()

    await sdk.dispatcher.subscribe(["amp_test_survivor"], inbox)
    sdk.dispatcher.add_catch_up(catch_up)
    old_pid = await sdk.dispatcher.backend_pid()
    assert old_pid is not None
    killed = await sdk.db.fetch_value("SELECT pg_terminate_backend($1)", [old_pid])
    assert killed is True

    await asyncio.wait_for(caught_up.wait(), 30)
    assert sdk.dispatcher.reconnects == 1
    new_pid = await sdk.dispatcher.backend_pid()
    assert new_pid is not None and new_pid != old_pid

    await notify(sdk, "amp_test_survivor")
    channel, notification = await inbox.next()
    assert channel == "amp_test_survivor" and isinstance(notification, MessageStored)
    assert await sdk.dispatcher.ping(timeout=5.0)


async def test_one_listener_connection_for_many_channels(either: SDK) -> None:
    sdk = either
    inbox = Inbox()
    channels = [f"amp_test_many_{i}" for i in range(300)]
    await sdk.dispatcher.subscribe(channels, inbox)
    pid = await sdk.dispatcher.backend_pid()
    rows = await sdk.db.fetch(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid = $1",
        [pid],
    )
    assert rows[0]["n"] == 1
    await notify(sdk, channels[-1])
    assert (await inbox.next())[0] == channels[-1]


# -- the wait primitive (Dispatcher.waiting / wait_until) ------------------------


async def test_wait_wakes_on_wanted_notifications_and_cleans_up(dsn: str) -> None:
    """listen -> check -> wait -> re-check: an unwanted notification does not cause
    a re-check, a wanted one does; the outcome is the check's; on return the
    channel is unsubscribed and no catch-up is left behind."""
    # no fallback poll and no health-check reconnect (whose catch-up would re-check)
    config = make_config(dsn, listener_check_interval=60.0)
    async with AgentMessaging[Any](config) as sdk:
        await sdk.db.execute("CREATE TABLE wait_flag (done boolean NOT NULL)")
        await sdk.db.execute("INSERT INTO wait_flag VALUES (false)")
        seen: list[bool] = []
        first = asyncio.Event()

        async def check(remaining: float | None) -> Outcome[str] | None:
            assert remaining is not None and remaining > 0
            done = bool(await sdk.db.fetch_value("SELECT done FROM wait_flag"))
            seen.append(done)
            first.set()
            return Outcome("flag set") if done else None

        loop = asyncio.get_running_loop()
        waiter = asyncio.create_task(
            sdk.dispatcher.wait_until(
                ["amp_test_wait"],
                check,
                loop.time() + 60,
                poll=60,
                wanted=lambda n: isinstance(n, MessageStored),
            )
        )
        await asyncio.wait_for(first.wait(), 30)
        probe = Inbox()
        await sdk.dispatcher.subscribe(["amp_test_probe"], probe)
        # unwanted, then a probe on another channel: once the probe is routed, the
        # unwanted notification was routed too (one session, in order)
        await sdk.db.execute(
            "SELECT pg_notify('amp_test_wait', '{\"kind\":\"nothing\"}'), "
            "pg_notify('amp_test_probe', $1)",
            [PAYLOAD],
        )
        await probe.next(30)
        await sdk.db.execute("UPDATE wait_flag SET done = true")
        await notify(sdk, "amp_test_wait")
        outcome = await asyncio.wait_for(waiter, 30)
        assert outcome == Outcome("flag set")
        assert seen == [False, True]
        assert not sdk.dispatcher.subscribed("amp_test_wait")
        assert sdk.dispatcher._catch_ups == []


async def test_wait_rides_out_transient_errors_and_ends_at_the_deadline(sdk: SDK) -> None:
    loop = asyncio.get_running_loop()
    calls = 0

    async def flaky(_remaining: float | None) -> Outcome[int] | None:
        nonlocal calls
        calls += 1
        await sdk.db.fetch_value("SELECT 1")
        if calls == 1:
            raise ConnectionLostError("lost", outcome_unknown=False)
        return Outcome(calls)

    assert await sdk.dispatcher.wait_until(["amp_test_w1"], flaky, loop.time() + 30, 30) == (
        Outcome(2)
    )

    async def never(_remaining: float | None) -> Outcome[int] | None:
        await sdk.db.fetch_value("SELECT 1")
        return None

    # nothing comes: None once the deadline passed (polling meanwhile)
    assert await sdk.dispatcher.wait_until(["amp_test_w2"], never, loop.time() + 0.3, 0.1) is None
    assert not sdk.dispatcher.subscribed("amp_test_w1")
    assert not sdk.dispatcher.subscribed("amp_test_w2")


async def test_wait_check_error_ends_the_wait_and_cleans_up(sdk: SDK) -> None:
    async def refuse(_remaining: float | None) -> Outcome[int] | None:
        await sdk.db.fetch_value("SELECT amp.get_agent('nobody')")
        return None

    loop = asyncio.get_running_loop()
    with pytest.raises(AgentNotFoundError):
        await sdk.dispatcher.wait_until(["amp_test_w3"], refuse, loop.time() + 30, 30)
    assert not sdk.dispatcher.subscribed("amp_test_w3")
    assert sdk.dispatcher._catch_ups == []
