"""A brainstorming meeting (turn-based, with turn timeouts).

The facilitator hosts a meeting with three participants, each an asyncio task here
(they could as well be separate processes or machines). It shows:

- the invitation list as the round-robin order, and an explicit next speaker: the
  facilitator opens by giving the first turn to ``designer``, out of order;
- round robin: after that, every speaker just speaks and the turn moves on;
- a turn timeout: ``skeptic`` stays silent on its first turn, so after
  ``turn_duration`` seconds the turn expires (a system message is stored, the
  ``agent_timed_out`` event fires) and passes to the next participant;
- the history at the end, timeout included.

    python examples/brainstorming.py [turn_duration_seconds]
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any
from uuid import UUID

from _common import ensure_agents

from agent_messaging import AgentMessaging, MeetingEvent

HOST = "facilitator"
PARTICIPANTS = ["engineer", "designer", "skeptic"]
IDEAS = {
    "engineer": ["store everything in PostgreSQL", "LISTEN/NOTIFY for wake-ups"],
    "designer": ["a live meeting view", "colour the speaker's row"],
    "skeptic": ["(silent)", "what if the database is down?"],
}


async def participant(
    sdk: AgentMessaging[dict[str, Any]],
    agent: str,
    meeting_id: UUID,
    timed_out: dict[str, asyncio.Event],
) -> None:
    """Attend, then speak on each turn (``skeptic`` lets its first turn expire)."""
    signal = await sdk.meeting.attend_meeting(agent, meeting_id, timeout=60)
    spoken = 0
    while not signal.meeting_ended:
        idea = IDEAS[agent][min(spoken, len(IDEAS[agent]) - 1)]
        spoken += 1
        if idea == "(silent)":
            # say nothing until the turn has expired, then wait for the next one
            await asyncio.wait_for(timed_out[agent].wait(), 60)
            signal = await sdk.meeting.wait_for_turn(agent, meeting_id, timeout=60)
            continue
        signal = await sdk.meeting.speak(agent, meeting_id, {"text": idea}, timeout=60)


async def main(turn_duration: float) -> None:
    async with AgentMessaging[dict[str, Any]]() as sdk:
        await ensure_agents(sdk, "brainstorm", HOST, *PARTICIPANTS)
        timed_out = {agent: asyncio.Event() for agent in PARTICIPANTS}

        @sdk.register_event_handler(MeetingEvent.AGENT_TIMED_OUT)
        async def on_timeout(meeting_id: UUID, agent: str | None, data: dict[str, Any]) -> None:
            print(f"(event: {agent}'s turn timed out)")
            if agent in timed_out:
                timed_out[agent].set()

        meeting_id = await sdk.meeting.create_meeting(
            HOST, [HOST, *PARTICIPANTS], turn_duration=turn_duration
        )
        print(f"meeting {meeting_id}, turns of {turn_duration:g} s")
        tasks = [
            asyncio.create_task(participant(sdk, a, meeting_id, timed_out)) for a in PARTICIPANTS
        ]
        await sdk.meeting.wait_until_ready(meeting_id, timeout=30)
        await sdk.meeting.start_meeting(
            HOST,
            meeting_id,
            {"text": "How should agents talk?"},
            next_speaker_external_id="designer",
        )
        # designer (explicit), then round robin: skeptic (silent, times out),
        # facilitator, engineer, designer, skeptic, facilitator
        await sdk.meeting.attend_meeting(HOST, meeting_id, timeout=60)
        await sdk.meeting.speak(HOST, meeting_id, {"text": "One more round."}, timeout=60)
        await sdk.meeting.end_meeting(HOST, meeting_id)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

        print("history:")
        for entry in await sdk.meeting.get_meeting_history(meeting_id):
            if entry.content is not None:
                print(f"  {entry.sender_external_id}: {entry.content['text']}")
            else:
                system = entry.system or {}
                if system.get("event") == "agent_timed_out":
                    print(f"  [timeout] {system.get('agent_external_id')}: {system.get('text')}")
                else:
                    print(f"  [system] {system.get('text')}")


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0))
