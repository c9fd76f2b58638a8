"""Notifications get lost and connections drop: every wait recovers from the tables."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent_messaging import AgentMessaging, MessageContext

from .helpers import make_config, wait_for_notification

SDK = AgentMessaging[Any]


@pytest.fixture
async def slow_poll(dsn: str) -> AsyncIterator[SDK]:
    """An SDK whose fallback poll is a minute: only NOTIFY or a catch-up wakes it."""
    config = make_config(dsn, poll_interval=60.0, listener_check_interval=60.0)
    async with AgentMessaging[Any](config) as sdk:
        await sdk.register_organization("org1")
        for name in ("alice", "bob"):
            await sdk.register_agent(name, "org1")
        yield sdk


async def kill_listener(sdk: SDK) -> None:
    pid = await sdk.dispatcher.backend_pid()
    assert await sdk.db.fetch_value("SELECT pg_terminate_backend($1)", [pid]) is True


async def test_sync_wait_survives_listener_loss(slow_poll: SDK) -> None:
    """The reply is stored while the listener is down; its NOTIFY is lost; the
    reconnect's catch-up re-reads the table and the waiter gets the reply."""
    sdk = slow_poll
    asking = asyncio.create_task(
        sdk.sync_conversation.send_and_wait("alice", "bob", "are you there?", timeout=30)
    )

    async def stored() -> bool:
        return bool(await sdk.db.fetch("SELECT 1 FROM amp.awaiting_reply('bob')"))

    await wait_for_notification(sdk, "bob", stored)
    await kill_listener(sdk)
    await sdk.sync_conversation.reply("bob", "alice", "yes")  # its NOTIFY reaches nobody
    assert await asyncio.wait_for(asking, 30) == "yes"
    assert sdk.dispatcher.reconnects >= 1


async def test_async_wait_survives_listener_loss(slow_poll: SDK) -> None:
    sdk = slow_poll
    waiting = asyncio.create_task(
        sdk.async_conversation.wait_for_message("bob", "alice", timeout=30)
    )
    channel = await sdk.db.fetch_value("SELECT amp.agent_channel('bob')")
    # subscribed, and the listener (started by this first subscriber) connected
    while not (sdk.dispatcher.subscribed(channel) and sdk.dispatcher.connected):  # noqa: ASYNC110
        await asyncio.sleep(0)
    await kill_listener(sdk)
    await sdk.async_conversation.send("alice", "bob", "while you were away")
    assert await asyncio.wait_for(waiting, 30) == "while you were away"


async def test_handler_gets_messages_sent_while_listener_was_down(slow_poll: SDK) -> None:
    sdk = slow_poll
    got: asyncio.Queue[Any] = asyncio.Queue()

    @sdk.register_handler("bob")
    async def bob(message: Any, context: MessageContext) -> None:
        got.put_nowait(message)

    await sdk.serve_handlers()
    await kill_listener(sdk)
    await sdk.one_way.send("alice", "bob", "sent into the gap")
    assert await asyncio.wait_for(got.get(), 30) == "sent into the gap"
