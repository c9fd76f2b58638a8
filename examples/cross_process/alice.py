"""Cross-process, part 2: Alice asks Bob (running in another process) questions.

See bob.py. Alice registers herself if needed, asks three questions and waits for
each answer, then says bye with a one-way note.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from agent_messaging import AgentAlreadyExistsError, AgentMessaging, OrganizationAlreadyExistsError


async def main() -> None:
    async with AgentMessaging[dict[str, Any]]() as sdk:
        with contextlib.suppress(OrganizationAlreadyExistsError):
            await sdk.register_organization("pals")
        for name in ("alice", "bob"):
            with contextlib.suppress(AgentAlreadyExistsError):
                await sdk.register_agent(name, "pals")
        for text in ("hello", "stressed", "racecar"):
            answer = await sdk.sync_conversation.send_and_wait(
                "alice", "bob", {"text": text}, timeout=60
            )
            print(f"alice asked {text!r}, bob answered {answer['text']!r}", flush=True)
        await sdk.one_way.send("alice", "bob", {"text": "bye"})


if __name__ == "__main__":
    asyncio.run(main())
