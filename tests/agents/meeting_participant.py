"""A meeting participant in its own OS process.

    python meeting_participant.py DSN AGENT MEETING_ID PLAN_JSON

PLAN is the list of steps it takes, one per turn: ``{"op": "start" | "speak" | "end" |
"hang", "next": external id or null}``. A first ``start`` step (the host's) waits until
the meeting is ready, then starts it. ``hang`` keeps the turn without speaking until the
process is killed. Prints one JSON line per step: ``{"event": "attending" | "turn" |
"hanging" | "done", ...}``; ``done`` carries the meeting history as this process sees it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from uuid import UUID

from agent_messaging import AgentMessaging, Config


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def main(dsn: str, agent: str, meeting_id: UUID, plan: list[dict[str, Any]]) -> None:
    config = Config(
        database_url=dsn, poll_interval=1.0, listener_check_interval=1.0, apply_migrations=False
    )
    async with AgentMessaging[Any](config) as sdk:  # hears text and JSON alike
        meetings = sdk.meeting
        steps = iter(plan)
        step = next(steps, None)
        spoken = 0
        if step is not None and step["op"] == "start":
            await meetings.wait_until_ready(meeting_id, timeout=60)
            await meetings.start_meeting(
                agent, meeting_id, {"text": f"{agent} opens"}, step.get("next")
            )
            step = next(steps, None)
        emit("attending")
        signal = await meetings.attend_meeting(agent, meeting_id, timeout=60)
        while not signal.meeting_ended:
            emit("turn", heard=[m.seq for m in signal.messages])
            if step is None or step["op"] == "hang":
                emit("hanging")
                await asyncio.Event().wait()
                return
            if step["op"] == "end":
                await meetings.end_meeting(agent, meeting_id)
                break
            spoken += 1
            signal = await meetings.speak(
                agent, meeting_id, {"text": f"{agent} #{spoken}"}, step.get("next"), timeout=60
            )
            step = next(steps, None)
        history = await meetings.get_meeting_history(meeting_id)
        emit("done", history=[m.model_dump(mode="json") for m in history])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], UUID(sys.argv[3]), json.loads(sys.argv[4])))
