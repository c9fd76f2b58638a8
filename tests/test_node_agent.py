"""A second language: the Node.js agent of examples/node talks to Python agents
through the amp.* functions only."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from typing import Any

import pytest

from agent_messaging import AgentMessaging

from .helpers import REPO, AgentProcess
from .roles import Roles, as_role

NODE_DIR = REPO / "examples" / "node"


async def node_role_dsn(sdk: AgentMessaging[Any], dsn: str, roles: Roles) -> str:
    """The Node agent runs as its own login role, in a role bound to its organization."""
    group, login = roles.organization("node")
    await sdk.register_organization("node-org")
    await sdk.db.execute("SELECT amp.bind_organization('node-org', $1)", [group])
    return as_role(dsn, login)


pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


@pytest.fixture(scope="session")
def node_agent() -> list[str]:
    """The command that starts the Node agent (its npm packages installed once)."""
    if not (NODE_DIR / "node_modules" / "pg").is_dir():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300
        )
    return ["node", str(NODE_DIR / "agent.js")]


async def test_node_agent_answers_python_sync_requests(
    trio: AgentMessaging[Any], dsn: str, node_agent: list[str], roles: Roles
) -> None:
    node = await AgentProcess.spawn(*node_agent, await node_role_dsn(trio, dsn, roles), "nodey")
    try:
        await node.expect("ready")
        for i in range(5):
            answer = await trio.sync_conversation.send_and_wait(
                "alice", "nodey", {"q": i}, timeout=30
            )
            assert answer == {"answer": {"q": i}, "by": "node"}
        await trio.one_way.send("alice", "nodey", "fyi")
        received = await node.expect("received")
    finally:
        await node.stop()
    assert received == {"event": "received", "type": "one_way", "from": "alice", "content": "fyi"}
    assert (
        await trio.db.fetch_value(
            "SELECT organization_external_id FROM amp.agents a "
            "JOIN (SELECT id, external_id AS organization_external_id FROM amp.organizations) o "
            "ON o.id = a.organization_id WHERE a.external_id = 'nodey'"
        )
        == "node-org"
    )


async def test_node_agent_takes_part_in_a_python_hosted_meeting(
    trio: AgentMessaging[Any], dsn: str, node_agent: list[str], roles: Roles
) -> None:
    node = await AgentProcess.spawn(*node_agent, await node_role_dsn(trio, dsn, roles), "nodey")
    try:
        await node.expect("ready")
        meeting_id = await trio.meeting.create_meeting(
            "alice", ["alice", "nodey", "bob"], turn_duration=30
        )

        async def bob() -> int:
            signal = await trio.meeting.attend_meeting("bob", meeting_id, timeout=60)
            spoke = 0
            while not signal.meeting_ended:
                spoke += 1
                signal = await trio.meeting.speak("bob", meeting_id, {"text": f"bob {spoke}"})
            return spoke

        bob_task = asyncio.create_task(bob())
        # node attends from its delivery worker, on the invitation pushed to it
        assert (await node.expect("attended"))["host"] == "alice"
        await trio.meeting.wait_until_ready(meeting_id, timeout=30)
        # round robin from the host: nodey, bob, alice, twice
        await trio.meeting.start_meeting("alice", meeting_id, {"text": "agenda"})
        signal = await trio.meeting.attend_meeting("alice", meeting_id, timeout=60)
        assert [m.content for m in signal.messages if m.message_type == "meeting"] == [
            {"text": "node speaking (1)", "by": "node"},
            {"text": "bob 1"},
        ]
        signal = await trio.meeting.speak("alice", meeting_id, {"text": "again"}, timeout=60)
        assert signal.your_turn
        await trio.meeting.end_meeting("alice", meeting_id)
        assert await asyncio.wait_for(bob_task, 30) == 2
        assert (await node.expect("meeting_ended"))["meeting"] == str(meeting_id)
    finally:
        await node.stop()
    said = [
        (m.sender_external_id, m.content)
        for m in await trio.meeting.get_meeting_history(meeting_id)
        if m.message_type == "meeting"
    ]
    assert said == [
        ("alice", {"text": "agenda"}),
        ("nodey", {"text": "node speaking (1)", "by": "node"}),
        ("bob", {"text": "bob 1"}),
        ("alice", {"text": "again"}),
        ("nodey", {"text": "node speaking (2)", "by": "node"}),
        ("bob", {"text": "bob 2"}),
    ]
    assert [e["turn"] for e in node.events if e["event"] == "spoke"] == [1, 2]
