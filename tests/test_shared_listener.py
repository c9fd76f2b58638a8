"""One LISTEN connection per host (issue 17, ``share_listener``, on by default):
processes share the first one's listener through a Unix socket, and take over when it
is killed.

The processes poll only once a minute here: whatever is handled within the tests'
timeouts was woken by a notification forwarded by the hub, or by the catch-up after a
hand-over."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent_messaging import AgentMessaging, Config

from .helpers import AgentProcess, make_config, wait_for_notification

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


async def serve(
    dsn: str, agent: str, *flags: str, role: str | None = None, idle_timeout: float = 30.0
) -> AgentProcess:
    """A process serving ``agent`` (``flags``: of ``handle``), polling once a minute;
    ``role``: how it must listen."""
    process = await AgentProcess.start(
        dsn, "--poll", "60", "--idle-timeout", str(idle_timeout), "handle", agent, *flags
    )
    ready = await process.expect("ready")
    if role is not None:
        assert ready["role"] == role
    return process


def connections(sql: Conn, application_name: str) -> int:
    row = sql.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = %s",
        [application_name],
    ).fetchone()
    assert row is not None
    return int(str(row[0]))


async def test_sharing_is_the_default(dsn: str, sql: Conn, monkeypatch: pytest.MonkeyPatch) -> None:
    """Default settings: two serving processes on one database hold one LISTEN
    connection between them (the first runs the hub, the other subscribes), and once
    idle two connections for the one, one for the other."""
    monkeypatch.delenv("AMP_SHARE_LISTENER", raising=False)
    assert Config().share_listener
    config = make_config(dsn, poll_interval=60.0, application_name="tester")
    async with AgentMessaging[Any](config) as sdk:  # sends only, until it waits
        await setup(sdk, "alice", "bob", "carol")
        bob = await serve(dsn, "bob", role="hub", idle_timeout=0.2)
        carol = await serve(dsn, "carol", role="client", idle_timeout=0.2)
        try:
            assert len(listeners(sql)) == 1
            await sdk.one_way.send("alice", "carol", {"n": 1})
            assert (await carol.expect("handled"))["content"] == {"n": 1}
            await sdk.one_way.send("alice", "bob", {"n": 2})
            assert (await bob.expect("handled"))["content"] == {"n": 2}
            # idle: the hub's process its listener and one pool connection, the other
            # one pool connection; this one (send-only) none of the listener
            await until(lambda: connections(sql, "amp") == 2)
            assert connections(sql, "amp-listener") == 1
            assert connections(sql, "tester-listener") == 0
            assert not sdk.dispatcher.listening
        finally:
            for process in (bob, carol):
                await process.stop()


async def test_a_sync_wait_completes_after_its_hub_is_killed(dsn: str, sql: Conn) -> None:
    """The asker subscribes through another process's hub; the hub is SIGKILLed while
    it waits and the reply is stored at once (its NOTIFY may reach nobody): the asker
    takes the hub over, catches up from the tables and gets the reply."""
    async with AgentMessaging[Any](make_config(dsn, poll_interval=60.0)) as sdk:
        await setup(sdk, "alice", "bob", "carol")
        hub = await serve(dsn, "carol", role="hub")
        [old] = listeners(sql)
        try:
            asking = asyncio.create_task(
                sdk.sync_conversation.send_and_wait("alice", "bob", "still there?", timeout=60)
            )

            async def stored() -> bool:
                return bool(await sdk.db.fetch("SELECT 1 FROM amp.awaiting_reply('bob')"))

            await wait_for_notification(sdk, "bob", stored)
            assert sdk.dispatcher.listener_role == "client"
            hub.kill()
            await sdk.sync_conversation.reply("bob", "alice", "yes")
            assert await asyncio.wait_for(asking, 30) == "yes"
            assert sdk.dispatcher.reconnects >= 1
            assert sdk.dispatcher.listener_role == "hub"  # the only one left listening
            await until(lambda: len(listeners(sql)) == 1 and listeners(sql) != [old])
            # and the new hub forwards: the next round trip is woken by notifications
            replier = await serve(dsn, "bob", "--reply", role="client")
            try:
                answer = await sdk.sync_conversation.send_and_wait("alice", "bob", 2, timeout=30)
                assert answer == {"answer": 2}
            finally:
                await replier.stop()
        finally:
            await hub.stop()


async def test_a_hub_whose_event_loop_is_blocked_still_forwards(dsn: str, sql: Conn) -> None:
    """The hub runs on a thread of its own: a handler that holds its process's event
    loop (CPU-bound code, a blocking call) holds nobody else's notifications. Here
    the loop is blocked for good; the sync round trips of two other processes are
    woken by notifications the hub forwards (they poll once a minute)."""
    async with AgentMessaging[Any](make_config(dsn, poll_interval=60.0)) as sdk:
        await setup(sdk, "alice", "bob", "carol")
        hub = await serve(dsn, "carol", "--block-loop-on", "1", role="hub")
        replier = await serve(dsn, "bob", "--reply", role="client")
        try:
            await sdk.one_way.send("alice", "carol", {"n": 1})
            await hub.expect("started")  # its event loop is blocked from here on
            for i in range(3):
                answer = await sdk.sync_conversation.send_and_wait("alice", "bob", i, timeout=30)
                assert answer == {"answer": i}
            assert sdk.dispatcher.listener_role == "client"
            assert len(listeners(sql)) == 1  # nobody gave up on the hub
            assert await sdk.dispatcher.ping(timeout=10.0)
        finally:
            hub.kill()
            for process in (hub, replier):
                await process.stop()


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


#: a process that runs the host's hub, forks a child that outlives it, and closes
FORKING = """
import asyncio, os, sys, time
from agent_messaging import AgentMessaging, Config

async def main() -> None:
    async with AgentMessaging(Config(database_url=sys.argv[1])) as sdk:
        await sdk.dispatcher.start()
        print(sdk.dispatcher.listener_role, flush=True)
        pid = os.fork()
        if pid == 0:
            time.sleep(600)  # the forked child stays (the test kills it)
            os._exit(0)
        print(pid, flush=True)
    print("closed", flush=True)
    sys.stdin.read()

asyncio.run(main())
"""


async def test_a_forked_child_does_not_keep_the_hub(dsn: str) -> None:
    """A child forked from the hub's process inherits the lock's and the sockets'
    file descriptors, not the hub's thread: it closes them, so that once the hub's
    process closes, the next process starts a hub of its own at once (instead of
    finding the lock held and nobody answering, then listening alone)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FORKING,
        dsn,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    child: int | None = None
    try:

        async def line() -> str:
            assert proc.stdout is not None
            return (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()

        assert await line() == "hub"
        child = int(await line())
        assert await line() == "closed"
        async with AgentMessaging[Any](make_config(dsn)) as sdk:
            await sdk.dispatcher.start()
            assert sdk.dispatcher.listener_role == "hub"
    finally:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
