"""The notification dispatcher: routing, run-time subscriptions, reconnects."""

from __future__ import annotations

import asyncio

from agent_messaging import AgentMessaging
from agent_messaging.dispatcher import AnyNotification
from agent_messaging.notifications import MessageStored, Unknown

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


async def notify(sdk: SDK, channel: str, payload: str = PAYLOAD) -> None:
    await sdk.db.execute("SELECT pg_notify($1, $2)", [channel, payload])


async def test_routes_parsed_payloads_to_subscribers(sdk: SDK) -> None:
    inbox = Inbox()
    await sdk.dispatcher.subscribe(["amp_test_a", "amp_test_b"], inbox)
    await notify(sdk, "amp_test_b")
    channel, notification = await inbox.next()
    assert channel == "amp_test_b"
    assert isinstance(notification, MessageStored) and notification.message_type == "one_way"
    await notify(sdk, "amp_test_a", '{"kind":"from_the_future"}')
    assert await inbox.next() == ("amp_test_a", Unknown(kind="from_the_future"))


async def test_channels_added_after_start_are_heard(sdk: SDK) -> None:
    first, second = Inbox(), Inbox()
    await sdk.dispatcher.subscribe(["amp_test_first"], first)
    await notify(sdk, "amp_test_first")
    await first.next()
    await sdk.dispatcher.subscribe(["amp_test_second"], second)
    await notify(sdk, "amp_test_second")
    assert (await second.next())[0] == "amp_test_second"


async def test_unsubscribe_stops_routing(sdk: SDK) -> None:
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
    listening = await sdk.dispatcher._listener.execute(  # type: ignore[union-attr]
        "SELECT count(*) AS n FROM pg_listening_channels() c WHERE c = 'amp_test_c'",
        None,
        10.0,
        rows=True,
    )
    assert listening[0]["n"] == 1
    probe = Inbox()
    await sdk.dispatcher.subscribe(["amp_test_probe"], probe)
    await notify(sdk, "amp_test_c")
    await notify(sdk, "amp_test_probe")
    await probe.next()  # notifications arrive in order: amp_test_c's was routed first
    assert kept.queue.empty() and dropped.queue.empty()
    # a channel that will not be used again can be UNLISTENed
    await sdk.dispatcher.subscribe(["amp_test_c"], kept)
    await sdk.dispatcher.unsubscribe(["amp_test_c"], kept, keep_listening=False)
    listening = await sdk.dispatcher._listener.execute(  # type: ignore[union-attr]
        "SELECT count(*) AS n FROM pg_listening_channels() c WHERE c = 'amp_test_c'",
        None,
        10.0,
        rows=True,
    )
    assert listening[0]["n"] == 0


async def test_health_check_round_trip(sdk: SDK) -> None:
    assert not await sdk.dispatcher.ping(timeout=5.0)  # nobody subscribed: not listening
    await sdk.dispatcher.subscribe(["amp_test_ping"], Inbox())
    assert await sdk.dispatcher.ping(timeout=5.0)


async def test_survives_terminated_backend(sdk: SDK) -> None:
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


async def test_one_listener_connection_for_many_channels(sdk: SDK) -> None:
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
