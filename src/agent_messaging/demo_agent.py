"""One agent of ``amp demo``, in its own OS process.

    python -m agent_messaging.demo_agent DSN AGENT HOST

It serves ``AGENT``'s handler: it notes one-way messages, answers sync requests,
answers ``HOST``'s async messages in ``HOST``'s inbox, and attends the meetings it is
invited to, speaking whenever it has the turn. It prints one JSON line per thing it
does (for the demo to narrate) and exits when its stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any
from uuid import UUID

from .client import AgentMessaging
from .config import Config
from .models import MessageContext

IDEAS = {
    "bob": ["batch the delivery acks", "a dashboard on amp.active_meetings"],
    "carol": ["cache the agent channel names", "a Go client next"],
}


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "pid": os.getpid(), **fields}), flush=True)


async def take_part(sdk: AgentMessaging[Any], agent: str, meeting_id: UUID) -> None:
    """Attend, then speak on each turn until the meeting ends."""
    signal = await sdk.meeting.attend_meeting(agent, meeting_id, timeout=60)
    emit("attended", meeting=str(meeting_id))
    spoken = 0
    while not signal.meeting_ended:
        ideas = IDEAS.get(agent.split("-")[0], ["no more ideas"])
        idea = ideas[spoken % len(ideas)]
        spoken += 1
        emit("spoke", text=idea)
        signal = await sdk.meeting.speak(agent, meeting_id, {"text": idea}, timeout=60)
    emit("meeting_ended", meeting=str(meeting_id))


async def answer_inbox(sdk: AgentMessaging[Any], agent: str, host: str) -> None:
    """Answer every async message from ``host`` with an async message back."""
    while True:
        message = await sdk.async_conversation.wait_for_message(agent, host, timeout=None)
        reply = {"text": f"done: {message['text']}" if isinstance(message, dict) else "done"}
        await sdk.async_conversation.send(agent, host, reply)
        emit("async", got=message, replied=reply)


async def main(dsn: str, agent: str, host: str) -> None:
    config = Config(database_url=dsn, apply_migrations=False, poll_interval=1.0)
    async with AgentMessaging[Any](config) as sdk:
        meetings: set[asyncio.Task[None]] = set()

        @sdk.register_handler(agent)
        async def handle(message: Any, context: MessageContext) -> Any:
            if context.requires_reply:
                answer = {"text": f"{agent.split('-')[0]} says yes to {message['text']!r}"}
                emit("sync", question=message, answer=answer)
                return answer
            if context.is_meeting_message and context.meeting_id is not None:
                task = asyncio.create_task(take_part(sdk, agent, context.meeting_id))
                meetings.add(task)
                task.add_done_callback(meetings.discard)
                return None
            emit("one_way", sender=context.sender_external_id, content=message)
            return None

        await sdk.serve_handlers()
        inbox = asyncio.create_task(answer_inbox(sdk, agent, host))
        emit("ready", agent=agent)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for task in [inbox, *meetings]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
