"""One LISTEN connection per host (issue 17, ``share_listener``): processes share the
first one's listener through a Unix socket, and take over when it is killed.

The processes poll only once a minute here: whatever is handled within the tests'
timeouts was woken by a notification forwarded by the hub, or by the catch-up after a
hand-over."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent_messaging import AgentMessaging

from .helpers import AgentProcess, make_config

SDK = AgentMessaging[Any]
Conn = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Sharing on for this test and the processes it starts, in a private directory."""
    monkeypatch.setenv("AMP_SHARE_LISTENER", "1")
    monkeypatch.setenv("AMP_LISTENER_SOCKET_DIR", str(tmp_path))
    return tmp_path


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Re-check server-side state (pg_stat_activity) that nothing announces."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def listeners(sql: Conn) -> list[int]:
    """Backend pids of the LISTEN connections to the test's database."""
    rows = sql.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'amp-listener' ORDER BY pid"
    ).fetchall()
    return [int(str(r[0])) for r in rows]


def sockets(directory: Path) -> list[Path]:
    return list(directory.glob("listener-*.sock"))


async def setup(sdk: SDK, *names: str) -> None:
    await sdk.register_organization("org1")
    for name in names:
        await sdk.register_agent(name, "org1")


async def serve(dsn: str, agent: str, *flags: str) -> AgentProcess:
    process = await AgentProcess.start(dsn, "--poll", "60", "handle", agent, *flags)
    await process.expect("ready")
    return process


async def test_processes_share_one_listener(dsn: str, sql: Conn, shared: Path) -> None:
    config = make_config(dsn, poll_interval=60.0, share_listener=True)
    async with AgentMessaging[Any](config) as sdk:
        await setup(sdk, "alice", "bob", "carol", "dave")
        hub = await serve(dsn, "bob", "--reply")
        others = [await serve(dsn, name) for name in ("carol", "dave")]
        try:
            assert len(listeners(sql)) == 1  # three serving processes, one LISTEN
            assert sockets(shared)
            for name in ("bob", "carol", "dave"):
                await sdk.one_way.send("alice", name, {"to": name})
            assert (await hub.expect("handled"))["content"] == {"to": "bob"}
            for process, name in zip(others, ("carol", "dave"), strict=True):
                assert (await process.expect("handled"))["content"] == {"to": name}
            # a sync round trip whose asker subscribes through the hub too
            answer = await sdk.sync_conversation.send_and_wait("alice", "bob", "q", timeout=30)
            assert answer == {"answer": "q"}
            assert sdk.dispatcher.listener_role == "client"
            assert len(listeners(sql)) == 1
            assert await sdk.dispatcher.ping(timeout=10.0)  # the health check, via the hub
        finally:
            for process in (hub, *others):
                await process.stop()


async def test_the_hub_killed_another_takes_over_and_nothing_is_missed(
    dsn: str, sql: Conn, shared: Path
) -> None:
    async with AgentMessaging[Any](make_config(dsn)) as sdk:  # sends only: no listener
        await setup(sdk, "alice", "bob", "carol", "dave")
        hub = await serve(dsn, "bob")
        carol, dave = await serve(dsn, "carol"), await serve(dsn, "dave")
        try:
            [old] = listeners(sql)
            hub.kill()  # SIGKILL: no goodbye, the kernel closes its socket and lock
            # sent while the hub is gone (or while the others take over): the
            # catch-up after the hand-over finds them
            await sdk.one_way.send("alice", "carol", {"n": 1})
            await sdk.one_way.send("alice", "dave", {"n": 1})
            assert (await carol.expect("handled"))["content"] == {"n": 1}
            assert (await dave.expect("handled"))["content"] == {"n": 1}
            await until(lambda: len(listeners(sql)) == 1 and listeners(sql) != [old])
            # and the new hub forwards: later messages are woken by notifications
            for n in (2, 3):
                await sdk.one_way.send("alice", "carol", {"n": n})
                await sdk.one_way.send("alice", "dave", {"n": n})
                assert (await carol.expect("handled"))["content"] == {"n": n}
                assert (await dave.expect("handled"))["content"] == {"n": n}
            assert len(listeners(sql)) == 1
            # a third process arriving now subscribes to the new hub
            erin = await serve(dsn, "bob")
            await sdk.one_way.send("alice", "bob", {"n": "late"})
            assert (await erin.expect("handled"))["content"] == {"n": "late"}
            assert len(listeners(sql)) == 1
            await erin.stop()
        finally:
            for process in (hub, carol, dave):
                await process.stop()


async def test_without_a_usable_socket_directory_each_listens_alone(
    dsn: str, sql: Conn, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    config = make_config(dsn, share_listener=True, listener_socket_dir=blocked / "sub")
    async with AgentMessaging[Any](config) as sdk:
        await setup(sdk, "alice", "bob")
        waiting = asyncio.create_task(sdk.async_conversation.wait_for_message("bob", None, 30))
        # the connection shows in pg_stat_activity before its LISTEN is done and the
        # dispatcher holds it: wait for both, then look at how it listens
        await until(lambda: len(listeners(sql)) == 1 and sdk.dispatcher.listener_role != "")
        assert sdk.dispatcher.listener_role == "own"
        await sdk.async_conversation.send("alice", "bob", "still works")
        assert await asyncio.wait_for(waiting, 30) == "still works"
