"""An interview (synchronous conversation).

The interviewer asks a question and waits for the answer before asking the next;
the candidate's handler answers by returning a value. The last question is answered
with a question back (ping-pong): the interviewer's wait ends with the candidate's
question, and the interviewer replies to it.

    python examples/interview.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from _common import ensure_agents

from agent_messaging import AgentMessaging, MessageContext

ANSWERS = {
    "Tell me about yourself.": "I route messages between agents for a living.",
    "Why PostgreSQL?": "Because the state machine should live next to the state.",
}


async def main() -> None:
    async with AgentMessaging[dict[str, Any]]() as sdk:
        await ensure_agents(sdk, "hiring", "interviewer", "candidate")
        heard_back: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        @sdk.register_handler("candidate")
        async def candidate(question: dict[str, Any], context: MessageContext) -> Any:
            if question["text"] in ANSWERS:
                return {"text": ANSWERS[question["text"]]}
            # ask back: this is the reply to the interviewer, and now we wait
            final = await sdk.sync_conversation.send_and_wait(
                "candidate", "interviewer", {"text": "When could I start?"}, timeout=30
            )
            heard_back.set_result(final)
            return None

        await sdk.serve_handlers()
        for question in [*ANSWERS, "Any questions for us?"]:
            print(f"interviewer: {question}")
            answer = await sdk.sync_conversation.send_and_wait(
                "interviewer", "candidate", {"text": question}, timeout=30
            )
            print(f"candidate:   {answer['text']}")
        await sdk.sync_conversation.reply("interviewer", "candidate", {"text": "Monday."})
        print("interviewer: Monday.")
        print(f"(the candidate heard: {(await asyncio.wait_for(heard_back, 30))['text']})")
        await sdk.sync_conversation.end_conversation("interviewer", "candidate")


if __name__ == "__main__":
    asyncio.run(main())
