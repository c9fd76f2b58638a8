"""Cross-process, part 1: Bob, an agent that answers questions, in his own process.

Start Bob, then Alice in another terminal (or machine: point both at the same
AMP_DATABASE_URL):

    python examples/cross_process/bob.py &
    python examples/cross_process/alice.py

Bob serves until he is told "bye" (or is stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from agent_messaging import (
    AgentAlreadyExistsError,
    AgentMessaging,
    MessageContext,
    OrganizationAlreadyExistsError,
)


async def main() -> None:
    done = asyncio.Event()
    async with AgentMessaging[dict[str, Any]]() as sdk:
        with contextlib.suppress(OrganizationAlreadyExistsError):
            await sdk.register_organization("pals")
        for name in ("alice", "bob"):
            with contextlib.suppress(AgentAlreadyExistsError):
                await sdk.register_agent(name, "pals")

        @sdk.register_handler("bob")
        async def bob(message: dict[str, Any], context: MessageContext) -> Any:
            print(f"bob got {message['text']!r} from {context.sender_external_id}", flush=True)
            if message["text"] == "bye":
                done.set()
                return None
            return {"text": message["text"][::-1]}

        await sdk.serve_handlers()
        print("bob is listening", flush=True)
        await done.wait()


if __name__ == "__main__":
    asyncio.run(main())
