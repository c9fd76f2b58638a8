"""A second language: the Node.js agent of examples/node talks to Python agents
through the amp.* functions only."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest

from agent_messaging import AgentMessaging

from .helpers import REPO, AgentProcess

NODE_DIR = REPO / "examples" / "node"
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
    trio: AgentMessaging[Any], dsn: str, node_agent: list[str]
) -> None:
    node = await AgentProcess.spawn(*node_agent, dsn, "nodey")
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
