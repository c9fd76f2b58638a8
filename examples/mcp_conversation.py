"""Two MCP agents, a sync conversation and a meeting: the README's transcript.

    AMP_DATABASE_URL=postgresql://... python examples/mcp_conversation.py

Starts two ``amp mcp`` stdio servers (alice and bob, registered on the way) and
drives them with the ``mcp`` client library, the way an LLM host would; the
"LLMs" are stand-ins that make scripted tool calls. Prints every call and the
text part of its result. Needs the ``[mcp]`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

ORG = "demo"


@contextlib.asynccontextmanager
async def agent(name: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "agent_messaging.cli", "mcp", "--agent", name, "--org", ORG, "--register"],
        env=dict(os.environ),
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def call(who: str, session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
    print(f"{who} -> {tool}({shown})", flush=True)
    result = await session.call_tool(tool, arguments)
    text = "\n".join(getattr(block, "text", "") for block in result.content)
    print(f"{who} <- {tool}: " + text.replace("\n", "\n   "), flush=True)
    return result.structuredContent or {}


async def main() -> None:
    async with agent("alice") as alice, agent("bob") as bob:
        a, b = "alice", "bob"
        # a sync conversation: alice blocks in ask until bob answers
        asking = asyncio.create_task(
            call("alice", alice, "ask", to=b, content="Is the build green?", timeout_s=60)
        )
        await call("bob", bob, "wait_for_message", timeout_s=60)
        await call("bob", bob, "answer", to=a, content="Green: 412 tests passed.")
        await asking
        # a meeting: alice hosts, bob joins; two turns each, then alice ends it
        meeting = (
            await call(
                "alice",
                alice,
                "create_meeting",
                participants=[a, b],
                topic="Ship today?",
                turn_duration_s=60,
            )
        )["meeting_id"]
        hosting = asyncio.create_task(call("alice", alice, "join_meeting", meeting_id=meeting))
        await call("bob", bob, "join_meeting", meeting_id=meeting)
        # speak says something and then waits for the speaker's next turn
        replying = asyncio.create_task(
            call("bob", bob, "speak", meeting_id=meeting, content="Yes, after the changelog.")
        )
        await hosting
        agreeing = asyncio.create_task(
            call("alice", alice, "speak", meeting_id=meeting, content="Agreed: ship at 5.")
        )
        await replying
        closing = asyncio.create_task(
            call("bob", bob, "speak", meeting_id=meeting, content="I'll write it now.")
        )
        await agreeing
        await call("alice", alice, "end_meeting", meeting_id=meeting)
        await closing
        await call("bob", bob, "meeting_history", meeting_id=meeting)


if __name__ == "__main__":
    asyncio.run(main())
