"""``amp mcp``: real MCP servers in their own processes, driven by the ``mcp`` client.

Each test starts ``amp mcp`` subprocesses (stdio, or one streamable-HTTP server on
127.0.0.1 and a free port) and talks to them with ``mcp.ClientSession``, next to
plain SDK agents and psql on the same database. Waits are on tool results,
progress or resource notifications and NOTIFY, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from agent_messaging import AccessDeniedError, AgentMessaging

from .helpers import REPO, AgentProcess, PsqlSession, make_config, wait_for_notification
from .roles import Roles, as_role

mcp = pytest.importorskip("mcp")

from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client import streamable_http  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.types import (  # noqa: E402
    CallToolResult,
    CancelledNotification,
    CancelledNotificationParams,
    ClientNotification,
    ResourceUpdatedNotification,
    ServerNotification,
)

PARTICIPANT = Path(__file__).parent / "agents" / "meeting_participant.py"
WAIT = 60.0
#: content limit of the servers started here, so "oversized" is cheap to send
MAX_BYTES = 4096
TOOLS = {
    "whoami",
    "list_agents",
    "send_message",
    "ask",
    "pending_questions",
    "answer",
    "send_async",
    "check_inbox",
    "wait_for_message",
    "create_meeting",
    "join_meeting",
    "speak",
    "leave_meeting",
    "end_meeting",
    "meeting_history",
    "my_meetings",
}
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
Conn = psycopg.Connection[tuple[object, ...]]


def server_env(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMP_")}
    env.update(
        AMP_DATABASE_URL=dsn,
        AMP_APPLY_MIGRATIONS="false",
        AMP_POLL_INTERVAL="1",
        AMP_LISTENER_CHECK_INTERVAL="1",
        AMP_HEARTBEAT_INTERVAL="1",
        AMP_MAX_MESSAGE_BYTES=str(MAX_BYTES),
    )
    return env


def amp_mcp(*args: str) -> list[str]:
    return ["-m", "agent_messaging.cli", "mcp", "--progress-interval", "0.2", *args]


class Agent:
    """One MCP client session, with the notifications its server sent."""

    def __init__(self, session: ClientSession, updates: asyncio.Queue[str]) -> None:
        self.session = session
        self.updates = updates

    async def call(self, tool: str, **arguments: Any) -> CallToolResult:
        return await self.session.call_tool(
            tool, arguments, read_timeout_seconds=timedelta(seconds=120)
        )

    async def ok(self, tool: str, **arguments: Any) -> dict[str, Any]:
        """Call; assert success; the structured content."""
        result = await self.call(tool, **arguments)
        assert not result.isError, text(result)
        assert result.structuredContent is not None
        assert text(result)  # and a short text rendering
        return result.structuredContent

    async def fail(self, tool: str, **arguments: Any) -> str:
        """Call; assert a tool error; its text."""
        result = await self.call(tool, **arguments)
        assert result.isError, result
        return text(result)

    async def updated(self, uri: str, timeout: float = WAIT) -> None:
        """Wait for a ``resources/updated`` notification about ``uri``."""
        async with asyncio.timeout(timeout):
            while await self.updates.get() != uri:
                pass


def text(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def client_session(read: Any, write: Any) -> tuple[ClientSession, asyncio.Queue[str]]:
    updates: asyncio.Queue[str] = asyncio.Queue()

    async def on_message(message: Any) -> None:
        if isinstance(message, ServerNotification) and isinstance(
            message.root, ResourceUpdatedNotification
        ):
            updates.put_nowait(str(message.root.params.uri))

    return ClientSession(read, write, message_handler=on_message), updates


@contextlib.asynccontextmanager
async def stdio_agent(dsn: str, agent: str, *args: str) -> AsyncIterator[Agent]:
    """``amp mcp --agent AGENT`` over stdio, initialized."""
    params = StdioServerParameters(
        command=sys.executable,
        args=amp_mcp("--agent", agent, *args),
        env=server_env(dsn),
        cwd=str(REPO),
    )
    async with stdio_client(params) as (read, write):
        session, updates = client_session(read, write)
        async with session:
            await session.initialize()
            yield Agent(session, updates)


@contextlib.asynccontextmanager
async def http_server(dsn: str, *args: str) -> AsyncIterator[str]:
    """``amp mcp --http --port 0``; yields its URL (read from its stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *amp_mcp("--http", "--port", "0", *args),
        env=server_env(dsn),
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        seen = []
        async with asyncio.timeout(WAIT):
            while True:
                line = (await proc.stderr.readline()).decode()
                assert line, "amp mcp --http exited: " + "".join(seen)
                seen.append(line)
                if "streamable HTTP on " in line:
                    url = line.rsplit(" ", 1)[1].strip()
                    break
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def http_agent(url: str, agent: str | None) -> AsyncIterator[Agent]:
    """An MCP session on the HTTP server, acting as ``agent`` (header)."""
    import httpx

    headers = {"X-AMP-Agent": agent} if agent else {}
    if hasattr(streamable_http, "streamable_http_client"):  # mcp >= 1.2x
        client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(30, read=300))
        transport = streamable_http.streamable_http_client(url, http_client=client)
    else:
        transport = streamable_http.streamablehttp_client(url, headers=headers)
    async with transport as (read, write, _):
        session, updates = client_session(read, write)
        async with session:
            await session.initialize()
            yield Agent(session, updates)


def locked_sessions(sql: Conn) -> list[tuple[object, ...]]:
    return sql.execute(
        "SELECT id, locked_agent_id FROM amp.sessions WHERE locked_agent_id IS NOT NULL"
    ).fetchall()


# -- stdio: one-way, ask/answer, inbox, resources ------------------------------


async def test_two_stdio_servers_talk(trio: AgentMessaging[Any], dsn: str, sql: Conn) -> None:
    async with stdio_agent(dsn, "alice") as alice, stdio_agent(dsn, "bob") as bob:
        listed = await alice.session.list_tools()
        assert {t.name for t in listed.tools} == TOOLS
        for t in listed.tools:
            assert t.description and len(t.description) > 30, t.name
            assert t.inputSchema["type"] == "object"
            assert "ctx" not in t.inputSchema.get("properties", {}), t.name
        assert (await alice.ok("whoami")) == {
            "agent": "alice",
            "name": "Alice",
            "organization": "org1",
        }
        agents = {a["agent"]: a for a in (await alice.ok("list_agents"))["agents"]}
        assert agents["alice"]["online"] and agents["bob"]["online"]
        assert not agents["carol"]["online"]  # registered, served by no process

        # one-way: alice's note reaches bob's inbox; the subscribed resource says so
        await bob.session.subscribe_resource("amp://inbox")  # type: ignore[arg-type]
        await alice.ok("send_message", to="bob", content="hello bob")
        await bob.updated("amp://inbox")
        peeked = (await bob.ok("check_inbox", peek=True))["messages"]
        assert [(m["kind"], m["from"], m["content"]) for m in peeked] == [
            ("note", "alice", "hello bob")
        ]
        resource = await bob.session.read_resource("amp://inbox")  # type: ignore[arg-type]
        shown = json.loads(getattr(resource.contents[0], "text", ""))
        assert [m["content"] for m in shown["messages"]] == ["hello bob"]
        taken = (await bob.ok("check_inbox"))["messages"]
        assert [m["content"] for m in taken] == ["hello bob"]
        assert (await bob.ok("check_inbox"))["messages"] == []
        assert sql.execute(
            "SELECT delivery_status FROM amp.messages WHERE message_type = 'one_way'"
        ).fetchall() == [("delivered",)]

        # sync: alice asks and blocks (sending progress); bob sees it and answers
        progressed = asyncio.Event()

        async def progress(done: float, total: float | None, message: str | None) -> None:
            assert total == 30.0 and message and "bob" in message
            progressed.set()

        asking = asyncio.create_task(
            alice.session.call_tool(
                "ask",
                {"to": "bob", "content": "What is 6 x 7?", "timeout_s": 30},
                progress_callback=progress,
            )
        )
        got = (await bob.ok("wait_for_message", from_agent="alice", timeout_s=30))["message"]
        assert (got["kind"], got["content"]) == ("question", "What is 6 x 7?")
        questions = (await bob.ok("pending_questions"))["questions"]
        assert [(q["from"], q["question"]) for q in questions] == [("alice", "What is 6 x 7?")]
        await asyncio.wait_for(progressed.wait(), WAIT)  # alice is blocked, and says so
        assert len(locked_sessions(sql)) == 1
        await bob.ok("answer", to="alice", content={"answer": 42})
        answered = await asyncio.wait_for(asking, WAIT)
        assert answered.structuredContent == {
            "status": "answered",
            "from": "bob",
            "answer": {"answer": 42},
        }
        assert "42" in text(answered)
        assert locked_sessions(sql) == []
        assert (await bob.ok("pending_questions"))["questions"] == []

        # ask with nobody answering: a timeout result (not an error), nobody locked
        late = await alice.ok("ask", to="bob", content="still there?", timeout_s=0.5)
        assert late["status"] == "timeout"
        assert locked_sessions(sql) == []

        # async inbox, filtered by sender
        await trio.async_conversation.send("carol", "bob", {"from": "carol"})
        await alice.ok("send_async", to="bob", content={"report": 1})
        from_alice = (await bob.ok("check_inbox", from_agent="alice"))["messages"]
        assert [(m["kind"], m["content"]) for m in from_alice if m["kind"] == "async"] == [
            ("async", {"report": 1})
        ]
        rest = (await bob.ok("check_inbox"))["messages"]
        assert [m["from"] for m in rest if m["kind"] == "async"] == ["carol"]
        # an SDK agent reads what an MCP agent sent, and vice versa
        await bob.ok("send_async", to="carol", content="hi carol")
        assert await trio.async_conversation.get_unread_messages("carol") == ["hi carol"]


# -- a meeting: two MCP agents, one SDK process, psql watching ---------------


async def test_meeting_of_two_mcp_agents_and_an_sdk_agent(
    trio: AgentMessaging[Any], dsn: str
) -> None:
    watcher = await PsqlSession.start(dsn)
    carol: AgentProcess | None = None
    try:
        async with stdio_agent(dsn, "alice") as alice, stdio_agent(dsn, "bob") as bob:
            created = await alice.ok(
                "create_meeting",
                participants=["alice", "bob", "carol"],
                topic="Pick a name for the release",
                turn_duration_s=2,
            )
            meeting = created["meeting_id"]
            await watcher.run(f"LISTEN amp_meeting_{UUID(meeting).hex};")
            transcript = f"amp://meetings/{meeting}/transcript"
            await alice.session.subscribe_resource(transcript)  # type: ignore[arg-type]
            invites = (await bob.ok("check_inbox"))["messages"]
            assert [(m["kind"], m["content"]["meeting_id"]) for m in invites] == [
                ("invitation", meeting)
            ]
            mine = (await bob.ok("my_meetings"))["meetings"]
            assert [(m["meeting_id"], m["your_status"]) for m in mine] == [(meeting, "invited")]

            # carol: a plain SDK agent in its own process, speaking on each turn
            plan = [{"op": "speak"}, {"op": "speak"}]
            carol = await AgentProcess.spawn(
                sys.executable, str(PARTICIPANT), dsn, "carol", meeting, json.dumps(plan)
            )
            await carol.expect("attending")
            hosting = asyncio.create_task(alice.call("join_meeting", meeting_id=meeting))
            turn = await bob.ok("join_meeting", meeting_id=meeting, timeout_s=WAIT)
            assert turn["status"] == "your_turn"
            assert any(
                m.get("content") == "Pick a name for the release"
                for m in turn["said_since_you_spoke"]
            )
            # bob speaks; carol speaks; the turn comes to alice
            speaking = asyncio.create_task(
                bob.call("speak", meeting_id=meeting, content="Call it Heron", timeout_s=WAIT)
            )
            await alice.updated(transcript)
            first = (await asyncio.wait_for(hosting, WAIT)).structuredContent
            assert first is not None and first["status"] == "your_turn"
            heard = [(m["from"], m.get("content")) for m in first["said_since_you_spoke"]]
            assert ("bob", "Call it Heron") in heard
            assert ("carol", {"text": "carol #1"}) in heard, (first, carol.events)
            # alice speaks; bob has the turn and stays silent: it times out (2 s),
            # carol speaks again, and the turn is alice's
            again = await alice.ok(
                "speak", meeting_id=meeting, content="Heron it is?", timeout_s=WAIT
            )
            bob_turn = (await asyncio.wait_for(speaking, WAIT)).structuredContent
            assert bob_turn is not None and bob_turn["status"] == "your_turn"
            assert again["status"] == "your_turn"
            events = [
                (m["from"], m.get("event"), m.get("agent")) for m in again["said_since_you_spoke"]
            ]
            assert ("system", "agent_timed_out", "bob") in events
            assert ("carol", None, None) in events
            # bob speaks late (stored, marked late, the turn stays), then alice ends it
            while not alice.updates.empty():
                alice.updates.get_nowait()
            late = asyncio.create_task(
                bob.call("speak", meeting_id=meeting, content="Sorry, yes", timeout_s=WAIT)
            )
            while not (
                await trio.db.fetch_value(
                    "SELECT count(*) FROM amp.messages "
                    "WHERE is_late AND meeting_id = $1::text::uuid",
                    [meeting],
                )
            ):
                await alice.updated(transcript)  # the transcript changed: look again
            await alice.ok("end_meeting", meeting_id=meeting)
            ended = (await asyncio.wait_for(late, WAIT)).structuredContent
            assert ended is not None and ended["status"] == "ended"
            done = await carol.expect("done", WAIT)

            history = (await bob.ok("meeting_history", meeting_id=meeting))["messages"]
            said = [
                (m["from"], m.get("content"), m.get("late"))
                for m in history
                if m["from"] != "system"
            ]
            assert said == [
                ("alice", "Pick a name for the release", False),
                ("bob", "Call it Heron", False),
                ("carol", {"text": "carol #1"}, False),
                ("alice", "Heron it is?", False),
                ("carol", {"text": "carol #2"}, False),
                ("bob", "Sorry, yes", True),
            ]
            # the SDK process saw the same meeting
            assert [m["seq"] for m in done["history"]] == [m["seq"] for m in history]
            # and psql, watching the timeline, saw every event
            rows = await watcher.run(
                "SELECT what || ':' || coalesce(agent, '') FROM amp.meeting_timeline "
                f"WHERE meeting_id = '{meeting}' AND kind = 'event' ORDER BY at, kind_order, seq;"
            )
            assert rows.count("agent_spoke:bob") == 2
            assert "agent_timed_out:bob" in rows
            assert rows.count("agent_spoke:carol") == 2
            assert rows[-1] == "meeting_ended:alice"
            assert watcher.notifications  # it LISTENed on the meeting's channel
            resource = await alice.session.read_resource(transcript)  # type: ignore[arg-type]
            assert json.loads(getattr(resource.contents[0], "text", ""))["status"] == "ended"
    finally:
        if carol is not None:
            await carol.stop()
        await watcher.close()


# -- cancellation, and a server killed mid-wait --------------------------------


async def test_cancelled_ask_cancels_the_wait_in_sql(
    trio: AgentMessaging[Any], dsn: str, sql: Conn
) -> None:
    async with stdio_agent(dsn, "alice") as alice:
        progressed = asyncio.Event()

        async def progress(done: float, total: float | None, message: str | None) -> None:
            progressed.set()

        request_id = alice.session._request_id  # the id the next request gets
        asking = asyncio.create_task(
            alice.session.call_tool(
                "ask", {"to": "bob", "content": "anyone?", "timeout_s": 120}, None, progress
            )
        )
        await asyncio.wait_for(progressed.wait(), WAIT)
        assert len(locked_sessions(sql)) == 1  # alice waits on bob, in SQL
        await alice.session.send_notification(
            ClientNotification(
                CancelledNotification(
                    params=CancelledNotificationParams(requestId=request_id, reason="user")
                )
            )
        )
        # cancel_wait NOTIFYs bob: listen, check, wait, re-check
        await wait_for_notification(
            trio, "bob", lambda: asyncio.to_thread(lambda: not locked_sessions(sql)), WAIT
        )
        asking.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asking
        assert sql.execute(
            "SELECT status FROM amp.sync_result("
            "(SELECT id FROM amp.messages WHERE message_type = 'sync_request'))"
        ).fetchone() == ("cancelled",)
        # the server keeps serving, and alice may ask again
        assert (await alice.ok("whoami"))["agent"] == "alice"
        again = await alice.ok("ask", to="bob", content="anyone now?", timeout_s=0.3)
        assert again["status"] == "timeout"
        assert locked_sessions(sql) == []


async def test_server_killed_in_join_meeting_loses_nothing(
    trio: AgentMessaging[Any], dsn: str, sql: Conn
) -> None:
    meetings = trio.meeting
    meeting = await meetings.create_meeting("carol", ["carol", "bob"], turn_duration=1.5)
    async with stdio_agent(dsn, "bob") as bob:
        joining = asyncio.create_task(bob.call("join_meeting", meeting_id=str(meeting)))
        await meetings.wait_until_ready(meeting, timeout=WAIT)  # bob attended
        pid = sql.execute("SELECT pid FROM amp.online_agents WHERE agent = 'bob'").fetchone()
        assert pid is not None
        os.kill(int(str(pid[0])), signal.SIGKILL)
        joining.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await joining
    # bob's server is gone; carol starts, the turn goes to bob and times out as for
    # any agent, and comes back to carol
    await meetings.start_meeting("carol", meeting, {"text": "welcome"})
    signal_ = await meetings.attend_meeting("carol", meeting, timeout=WAIT)
    assert signal_.your_turn
    timeouts = [m.system for m in signal_.messages if m.system is not None]
    assert any(
        s["event"] == "agent_timed_out" and s["agent_external_id"] == "bob" for s in timeouts
    )
    # nothing lost: bob is still a participant; a new server picks up where it was
    assert sql.execute(
        "SELECT p.status FROM amp.meeting_participants p JOIN amp.agents a ON a.id = p.agent_id "
        "WHERE a.external_id = 'bob'"
    ).fetchone() == ("waiting",)
    async with stdio_agent(dsn, "bob") as bob:
        rejoining = asyncio.create_task(bob.call("join_meeting", meeting_id=str(meeting)))
        await trio.db.execute(
            "SELECT amp.speak('carol', $1::text::uuid, '{\"text\": \"bob?\"}'::jsonb)",
            [str(meeting)],
        )
        turn = (await asyncio.wait_for(rejoining, WAIT)).structuredContent
        assert turn is not None and turn["status"] == "your_turn"
        heard = [m.get("content") for m in turn["said_since_you_spoke"]]
        assert {"text": "welcome"} in heard and {"text": "bob?"} in heard
        await bob.ok("speak", meeting_id=str(meeting), content="back", timeout_s=0.2)
        history = await meetings.get_meeting_history(meeting)
        assert [m.content for m in history if m.sender_external_id == "bob"] == ["back"]


# -- bad input --------------------------------------------------------------------


async def test_bad_input_is_a_tool_error_and_the_server_keeps_serving(
    trio: AgentMessaging[Any], dsn: str, sql: Conn
) -> None:
    def stored() -> int:
        row = sql.execute("SELECT count(*) FROM amp.messages").fetchone()
        return int(str(row[0])) if row else -1

    async with stdio_agent(dsn, "alice") as alice, stdio_agent(dsn, "bob") as bob:
        before = stored()
        # unknown agent
        error = await alice.fail("send_message", to="nobody", content="hi")
        assert "nobody" in error and "list_agents" in error
        error = await alice.fail("ask", to="nobody", content="hi", timeout_s=1)
        assert "list_agents" in error
        error = await alice.fail("check_inbox", from_agent="nobody")
        assert "list_agents" in error
        # wrong types
        error = await alice.fail("ask", to="bob", content="x", timeout_s="soon")
        assert "timeout_s" in error and "call ask again" in error
        error = await alice.fail("check_inbox", limit="all")
        assert "limit" in error
        error = await alice.fail("send_message", to=["bob"], content="x")
        assert "to" in error
        error = await alice.fail("create_meeting", participants="bob", topic="t")
        assert "participants" in error
        # oversized content
        error = await alice.fail("send_async", to="bob", content="x" * (MAX_BYTES + 1))
        assert "limit" in error and "shorten" in error
        error = await alice.fail("send_message", to="bob", content={"x": "y" * MAX_BYTES})
        assert "shorten" in error
        # to oneself, answering nobody
        error = await alice.fail("send_message", to="alice", content="me")
        assert "itself" in error
        error = await alice.fail("answer", to="bob", content="?")
        assert "pending_questions" in error
        assert stored() == before  # nothing was stored by any of these
        assert locked_sessions(sql) == []

        # meetings: bad ids, out of turn, not the host, the host leaving, ended
        error = await alice.fail("join_meeting", meeting_id="not-a-uuid")
        assert "my_meetings" in error
        error = await alice.fail("meeting_history", meeting_id=str(UUID(int=1)))
        assert "not found" in error and "my_meetings" in error
        meeting = (
            await alice.ok(
                "create_meeting", participants=["alice", "bob"], topic="t", turn_duration_s=60
            )
        )["meeting_id"]
        error = await bob.fail("speak", meeting_id=meeting, content="too early")
        assert "not started" in error and "join_meeting" in error
        hosting = asyncio.create_task(alice.call("join_meeting", meeting_id=meeting))
        turn = await bob.ok("join_meeting", meeting_id=meeting, timeout_s=WAIT)
        assert turn["status"] == "your_turn"
        error = await alice.fail("speak", meeting_id=meeting, content="me first")
        assert "not your turn" in error and "bob has the turn" in error
        assert "join_meeting" in error
        error = await bob.fail("end_meeting", meeting_id=meeting)
        assert "host" in error
        error = await alice.fail("leave_meeting", meeting_id=meeting)
        assert "end_meeting" in error
        error = await trio_fail_history(alice, "carol", meeting, dsn)
        assert "not a participant" in error
        await alice_end(alice, hosting, meeting)
        error = await bob.fail("speak", meeting_id=meeting, content="anyone?")
        assert "ended" in error and "meeting_history" in error
        error = await alice.fail("end_meeting", meeting_id=meeting)
        assert "meeting_history" in error

        # still serving, on both
        assert (await alice.ok("whoami"))["agent"] == "alice"
        assert (await bob.ok("meeting_history", meeting_id=meeting))["status"] == "ended"


async def trio_fail_history(alice: Agent, other: str, meeting: str, dsn: str) -> str:
    """A third agent (its own server) may not read a meeting it is not in."""
    async with stdio_agent(dsn, other) as outsider:
        return await outsider.fail("meeting_history", meeting_id=meeting)


async def alice_end(alice: Agent, hosting: asyncio.Task[CallToolResult], meeting: str) -> None:
    await alice.ok("end_meeting", meeting_id=meeting)
    result = (await asyncio.wait_for(hosting, WAIT)).structuredContent
    assert result is not None and result["status"] == "ended"


# -- streamable HTTP: one server, many agents ------------------------------------


async def test_http_server_serves_many_agents(
    trio: AgentMessaging[Any], dsn: str, sql: Conn
) -> None:
    async with http_server(dsn, "--allow-agent", "alice", "--allow-agent", "bob") as url:
        async with http_agent(url, "alice") as alice, http_agent(url, "bob") as bob:
            assert (await alice.ok("whoami"))["agent"] == "alice"
            assert (await bob.ok("whoami"))["agent"] == "bob"
            asking = asyncio.create_task(alice.call("ask", to="bob", content="ping", timeout_s=30))
            got = (await bob.ok("wait_for_message", timeout_s=30))["message"]
            assert (got["kind"], got["from"], got["content"]) == ("question", "alice", "ping")
            await bob.ok("answer", to="alice", content="pong")
            answered = (await asyncio.wait_for(asking, WAIT)).structuredContent
            assert answered is not None and answered["answer"] == "pong"
            online = {r[0] for r in sql.execute("SELECT agent FROM amp.online_agents").fetchall()}
            assert online == {"alice", "bob"}
        # a session must say who it is, and may only be an allowed agent
        async with http_agent(url, None) as anonymous:
            error = await anonymous.fail("whoami")
            assert "X-AMP-Agent" in error
        async with http_agent(url, "carol") as carol:
            error = await carol.fail("send_message", to="bob", content="hi")
            assert "may not act as agent 'carol'" in error
        async with http_agent(url, "alice") as alice:
            assert (await alice.ok("whoami"))["agent"] == "alice"


# -- a server logged in as an organization's role (the security model) -----------


async def test_server_on_an_organization_role_reads_through_the_api(dsn: str, roles: Roles) -> None:
    """``amp mcp`` logged in as the login role of a bound organization, which has no
    privilege on any table: whoami, list_agents, check_inbox(peek) and the inbox
    resource (pending pushed messages) and my_meetings work, and show only what the
    role may see."""
    acme_role, acme_login = roles.organization("acme")
    globex_role, globex_login = roles.organization("globex")
    acme, globex = as_role(dsn, acme_login), as_role(dsn, globex_login)
    with psycopg.connect(dsn, autocommit=True) as admin:
        for org, role, agents in (
            ("acme", acme_role, ("alice", "carol")),
            ("globex", globex_role, ("bob", "dave")),
        ):
            admin.execute("SELECT amp.register_organization(%s)", (org,))
            for agent in agents:
                admin.execute("SELECT amp.register_agent(%s, %s, %s)", (agent, org, agent.title()))
            admin.execute("SELECT amp.bind_organization(%s, %s)", (org, role))
    with psycopg.connect(acme, autocommit=True) as conn:
        conn.execute("SELECT amp.send_one_way('carol', 'alice', '\"hello alice\"')")
        row = conn.execute("SELECT amp.create_meeting('carol', ARRAY['carol', 'alice'])").fetchone()
        assert row is not None
        meeting = str(row[0])
    with psycopg.connect(globex, autocommit=True) as conn:
        # bob has a pending note, and a live worker: neither is acme's to see
        conn.execute("SELECT amp.send_one_way('dave', 'bob', '\"globex only\"')")
        worker = conn.execute("SELECT amp.register_worker('globex-host', 1)").fetchone()
        assert worker is not None
        conn.execute("SELECT amp.serve_agents(%s, ARRAY['bob'])", (worker[0],))

    async with stdio_agent(acme, "alice") as alice:
        assert (await alice.ok("whoami")) == {
            "agent": "alice",
            "name": "Alice",
            "organization": "acme",
        }
        # the directory: the agents alice can reach (no contact with globex yet)
        listed = (await alice.ok("list_agents"))["agents"]
        assert [(a["agent"], a["organization"], a["online"]) for a in listed] == [
            ("alice", "acme", True),
            ("carol", "acme", False),
        ]
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("SELECT amp.allow_contact('acme', 'globex')")
        # now globex's agents are listed; their presence is not acme's to see
        listed = (await alice.ok("list_agents", organization="globex"))["agents"]
        assert [(a["agent"], a["name"], a["online"]) for a in listed] == [
            ("bob", "Bob", None),
            ("dave", "Dave", None),
        ]
        assert [a["agent"] for a in (await alice.ok("list_agents", limit=3))["agents"]] == [
            "alice",
            "bob",
            "carol",
        ]
        # pending pushed messages: the note and the invitation, left where they are
        peeked = (await alice.ok("check_inbox", peek=True))["messages"]
        assert [(m["kind"], m["from"]) for m in peeked] == [
            ("note", "carol"),
            ("invitation", "carol"),
        ]
        resource = await alice.session.read_resource("amp://inbox")  # type: ignore[arg-type]
        shown = json.loads(getattr(resource.contents[0], "text", ""))
        assert [m["kind"] for m in shown["messages"]] == ["note", "invitation"]
        mine = (await alice.ok("my_meetings"))["meetings"]
        assert [(m["meeting_id"], m["host"], m["your_status"]) for m in mine] == [
            (meeting, "carol", "invited")
        ]
        taken = (await alice.ok("check_inbox"))["messages"]
        assert [m["kind"] for m in taken] == ["note", "invitation"]

    # another organization's agent: the same read of its pending messages is refused
    from agent_messaging.mcp_server import Seat

    async with AgentMessaging[Any](make_config(acme)) as sdk:
        with pytest.raises(AccessDeniedError, match="is not allowed to act as agent 'bob'"):
            await Seat(sdk, "bob").peek(None, 10)


# -- the README's transcript -----------------------------------------------------


async def test_readme_transcript_example_runs(dsn: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "examples" / "mcp_conversation.py"),
        env={**os.environ, "AMP_DATABASE_URL": dsn},
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    lines = out.decode().splitlines()
    assert "alice <- ask: bob answered: Green: 412 tests passed." in lines
    assert "bob <- meeting_history: Meeting <id> (ended):" in [
        re.sub(UUID_RE, "<id>", line) for line in lines
    ]
    readme = (REPO / "README.md").read_text()
    for line in lines:  # the README shows this very transcript, ids aside
        assert re.sub(UUID_RE, "<id>", line) in readme, line


# -- the wait of wait_for_message, in process --------------------------------------


async def test_wait_for_message_waits_with_the_dispatcher(trio: AgentMessaging[Any]) -> None:
    from agent_messaging.exceptions import AgentNotFoundError
    from agent_messaging.mcp_server import AmpMcpServer, McpSettings

    server = AmpMcpServer(trio, McpSettings(agent="bob"))
    seat = await server.seat("bob")
    channel = await trio.agent_channel("bob")
    try:
        # nothing comes: None once the timeout has passed, and nothing stays subscribed
        assert await server._next_message(seat, None, 0.2) is None
        assert not trio.dispatcher.subscribed(channel)
        # a message sent while waiting is taken; one from another sender is left
        waiting = asyncio.create_task(server._next_message(seat, "alice", WAIT))
        await trio.async_conversation.send("carol", "bob", "not this one")
        await trio.one_way.send("alice", "bob", "hello")
        item = await asyncio.wait_for(waiting, WAIT)
        assert item is not None
        assert (item["kind"], item["from"], item["content"]) == ("note", "alice", "hello")
        assert not trio.dispatcher.subscribed(channel)
        assert await trio.async_conversation.get_unread_messages("bob") == ["not this one"]
        # an error of a take ends the wait (the tool reports it)
        with pytest.raises(AgentNotFoundError):
            await server._next_message(seat, "nobody", WAIT)
        assert not trio.dispatcher.subscribed(channel)
    finally:
        await server.close()
