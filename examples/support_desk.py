"""A customer-support desk (sync + async + escalation).

The customer asks the front desk and waits (sync). The desk answers what it knows
at once; anything else it escalates to a specialist's inbox (async), waits for the
specialist's answer there, and passes it on as its reply. The customer only ever
sees one conversation.

    python examples/support_desk.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from _common import ensure_agents

from agent_messaging import AgentMessaging, MessageContext

FAQ = {"opening hours": "We are open 9 to 5, Monday to Friday."}


async def main() -> None:
    async with AgentMessaging[dict[str, Any]]() as sdk:
        await ensure_agents(sdk, "acme-support", "customer", "front-desk", "specialist")

        @sdk.register_handler("front-desk")
        async def desk(question: dict[str, Any], context: MessageContext) -> Any:
            topic = question["topic"]
            if topic in FAQ:
                return {"answer": FAQ[topic], "by": "front-desk"}
            await sdk.async_conversation.send("front-desk", "specialist", question)
            answer = await sdk.async_conversation.wait_for_message(
                "front-desk", "specialist", timeout=30
            )
            return {
                "answer": answer["answer"] if answer else "We will call you back.",
                "by": "specialist (escalated)",
            }

        async def specialist() -> None:
            case = await sdk.async_conversation.wait_for_message(
                "specialist", "front-desk", timeout=30
            )
            assert case is not None
            await sdk.async_conversation.send(
                "specialist",
                "front-desk",
                {"answer": f"Refund for order {case['order']} approved."},
            )

        await sdk.serve_handlers()
        expert = asyncio.create_task(specialist())
        for question in ({"topic": "opening hours"}, {"topic": "refund", "order": "A-1042"}):
            reply = await sdk.sync_conversation.send_and_wait(
                "customer", "front-desk", question, timeout=30
            )
            print(f"customer asked about {question['topic']}: {reply['answer']} [{reply['by']}]")
        await expert


if __name__ == "__main__":
    asyncio.run(main())
