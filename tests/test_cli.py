"""The amp CLI against a live scenario."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent_messaging import AgentMessaging, MessageContext

from .helpers import make_config, wait_for_notification

SDK = AgentMessaging[Any]


def amp(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_messaging.cli", *args, "--database-url", dsn],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
async def live(dsn: str) -> AsyncIterator[SDK]:
    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        await sdk.register_organization("org1")
        for name in ("alice", "bob", "carol"):
            await sdk.register_agent(name, "org1")
        yield sdk


async def test_status_json_shows_the_live_state(live: SDK, dsn: str) -> None:
    @live.register_handler("carol")
    async def carol(message: Any, context: MessageContext) -> None:
        return None

    await live.serve_handlers()
    await live.async_conversation.send("alice", "carol", "unread 1")
    await live.async_conversation.send("bob", "carol", "unread 2")
    asking = asyncio.create_task(
        live.sync_conversation.send_and_wait("alice", "bob", "waiting...", timeout=60)
    )

    async def stored() -> bool:
        return bool(await live.db.fetch("SELECT 1 FROM amp.awaiting_reply('bob')"))

    await wait_for_notification(live, "bob", stored)
    done = await asyncio.to_thread(amp, dsn, "status", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    sync = [c for c in status["conversations"] if c["session_type"] == "sync"]
    assert (sync[0]["waiting_agent"], sync[0]["waiting_on"], sync[0]["status"]) == (
        "alice",
        "bob",
        "waiting",
    )
    assert status["inboxes"] == [
        {
            "agent": "carol",
            "unread": 2,
            "oldest_unread_at": status["inboxes"][0]["oldest_unread_at"],
        }
    ]
    assert [o["agent"] for o in status["online"]] == ["carol"]
    assert status["failed_deliveries"] == []
    tables = await asyncio.to_thread(amp, dsn, "status")
    assert tables.returncode == 0 and "conversations" in tables.stdout and "carol" in tables.stdout
    await live.sync_conversation.reply("bob", "alice", "done")
    assert await asking == "done"


async def start_watch(dsn: str) -> asyncio.subprocess.Process:
    """`amp watch` in a subprocess, returned once it says it is watching."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_messaging.cli",
        "watch",
        "--seconds",
        "60",
        "--database-url",
        dsn,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.decode().startswith("watching")
    return proc


async def test_watch_streams_messages(live: SDK, dsn: str) -> None:
    proc = await start_watch(dsn)
    assert proc.stdout is not None
    try:
        await live.one_way.send("alice", "bob", {"hello": "bob"})
        await live.async_conversation.send("bob", "carol", "psst")
        seen: list[str] = []
        while len(seen) < 2:
            text = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            if text.startswith("message"):
                seen.append(" ".join(text.split()))
    finally:
        proc.kill()
        await proc.wait()
    assert seen == [
        'message one_way alice -> bob: {"hello": "bob"}',
        'message async bob -> carol: "psst"',
    ]


async def _attend(live: SDK, meeting_id: Any, *agents: str) -> list[asyncio.Task[Any]]:
    """Every agent attends (each task waits for its turn or the end); returns the tasks
    once the meeting is ready."""
    waiting = [
        asyncio.create_task(live.meeting.attend_meeting(a, meeting_id, timeout=60)) for a in agents
    ]
    await live.meeting.wait_until_ready(meeting_id, timeout=30)
    return waiting


async def test_status_json_shows_a_live_meeting(live: SDK, dsn: str) -> None:
    meeting_id = await live.meeting.create_meeting(
        "alice", ["alice", "bob", "carol"], turn_duration=120
    )
    waiting = await _attend(live, meeting_id, "bob", "carol")
    await live.meeting.start_meeting("alice", meeting_id, {"text": "agenda"}, "carol")
    done = await asyncio.to_thread(amp, dsn, "status", "--json")
    assert done.returncode == 0, done.stderr
    [meeting] = json.loads(done.stdout)["meetings"]
    assert (meeting["meeting_id"], meeting["status"], meeting["host"]) == (
        str(meeting_id),
        "active",
        "alice",
    )
    assert meeting["current_speaker"] == "carol"
    assert meeting["turn_deadline"] is not None and meeting["participants"] == 3
    tables = await asyncio.to_thread(amp, dsn, "status")
    assert tables.returncode == 0 and "meetings" in tables.stdout and "carol" in tables.stdout
    await live.meeting.end_meeting("alice", meeting_id)
    bob, carol = [await task for task in waiting]
    assert bob.meeting_ended and carol.your_turn


async def test_watch_streams_meeting_events(live: SDK, dsn: str) -> None:
    proc = await start_watch(dsn)
    assert proc.stdout is not None
    try:
        meeting_id = await live.meeting.create_meeting("alice", ["alice", "bob"], turn_duration=60)
        [bob] = await _attend(live, meeting_id, "bob")
        await live.meeting.start_meeting("alice", meeting_id, {"text": "agenda"})
        assert (await bob).your_turn
        speaking = asyncio.create_task(
            live.meeting.speak("bob", meeting_id, {"text": "my point"}, timeout=60)
        )
        assert (await live.meeting.attend_meeting("alice", meeting_id, timeout=60)).your_turn
        await live.meeting.end_meeting("alice", meeting_id)
        assert (await speaking).meeting_ended
        seen: list[str] = []
        while not seen or not seen[-1].startswith("meeting meeting_ended"):
            text = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            if text.startswith("meeting"):
                seen.append(" ".join(text.split()))
    finally:
        proc.kill()
        await proc.wait()
    assert seen == [
        f"meeting agent_joined alice in {meeting_id}",
        f"meeting agent_joined bob in {meeting_id}",
        f'meeting meeting_started alice in {meeting_id}: {{"text": "agenda"}}',
        f'meeting agent_spoke bob in {meeting_id}: {{"text": "my point"}}',
        f"meeting meeting_ended alice in {meeting_id}",
    ]


def test_demo_shows_all_four_patterns_across_processes(dsn: str) -> None:
    for _ in range(2):  # unique ids per run: it works again on the same database
        done = amp(dsn, "demo")
        assert done.returncode == 0, done.stderr[-3000:]
        out = " ".join(done.stdout.split())
        assert "one-way delivered: bob's handler (pid" in out
        assert "got 'the build is green' from alice" in out
        assert "sync answer: carol says yes to 'can we ship on Friday?'" in out
        assert "async reply in alice's inbox: done: review PR 42" in out
        assert "meeting ended: spoke in turn: alice, carol, alice, bob, carol" in out
        assert "bob is served by a separate process" in out


def test_bench_command_is_there() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent_messaging.cli", "bench", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for option in ("--quick", "--out", "--database-url"):
        assert option in done.stdout


def test_bench_says_so_when_the_harness_is_not_installed(tmp_path: Any) -> None:
    # as from an installed wheel: no bench package anywhere
    script = (
        "import sys; sys.modules['bench'] = None; sys.modules['bench.__main__'] = None\n"
        "from agent_messaging.cli import app\n"
        "app(['bench', '--quick'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 1
    assert "not importable" in " ".join(done.stdout.split())
