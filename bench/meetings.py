"""Meeting benchmarks: turn hand-off latency and meetings at scale, in one SDK process.

Every participant is an asyncio task of one SDK process (one listener connection,
one pool), which is how an SDK process serving many agents runs them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from agent_messaging import AgentMessaging


async def run_meeting(
    sdk: AgentMessaging[Any], size: int, rounds: int, handoffs: list[float] | None = None
) -> None:
    """One meeting of ``size`` agents (host included), ``rounds`` full rounds.

    With ``handoffs``, appends for every turn the seconds from the previous speaker
    calling ``speak`` to the next speaker's call returning with the turn.
    """
    tag = uuid.uuid4().hex[:8]
    agents = [f"m{tag}_{i}" for i in range(size)]
    for agent in agents:
        await sdk.register_agent(agent, "bench")
    host, guests = agents[0], agents[1:]
    meeting = await sdk.meeting.create_meeting(host, agents, turn_duration=None)
    spoke_at: list[float] = []

    async def guest(me: str) -> None:
        signal = await sdk.meeting.attend_meeting(me, meeting, timeout=300)
        while not signal.meeting_ended:
            if handoffs is not None and spoke_at:
                handoffs.append(time.perf_counter() - spoke_at[-1])
            spoke_at.append(time.perf_counter())
            signal = await sdk.meeting.speak(me, meeting, {"from": me}, timeout=300)

    tasks = [asyncio.create_task(guest(g)) for g in guests]
    await sdk.meeting.wait_until_ready(meeting, timeout=300)
    spoke_at.append(time.perf_counter())
    await sdk.meeting.start_meeting(host, meeting, {"agenda": "bench"})
    signal = await sdk.meeting.attend_meeting(host, meeting, timeout=300)
    for done in range(1, rounds + 1):
        if handoffs is not None:
            handoffs.append(time.perf_counter() - spoke_at[-1])
        if done == rounds:
            await sdk.meeting.end_meeting(host, meeting)
            break
        spoke_at.append(time.perf_counter())
        signal = await sdk.meeting.speak(host, meeting, {"round": done}, timeout=300)
        assert signal.your_turn, "the turn came back to the host"
    await asyncio.gather(*tasks)


async def meetings(sdk: AgentMessaging[Any], quick: bool) -> dict[str, Any]:
    """Hand-off latency in a 5-agent meeting; 100 (quick: 20) concurrent 5-agent
    meetings x 3 rounds; one 50-agent (quick: 20) meeting x 2 rounds."""
    handoffs: list[float] = []
    await run_meeting(sdk, 5, 10 if quick else 40, handoffs)
    handoffs.sort()
    concurrent = 20 if quick else 100
    started = time.perf_counter()
    await asyncio.gather(*(run_meeting(sdk, 5, 3) for _ in range(concurrent)))
    concurrent_s = time.perf_counter() - started
    big = 20 if quick else 50
    started = time.perf_counter()
    await run_meeting(sdk, big, 2)
    big_s = time.perf_counter() - started

    def pct(q: float) -> float:
        return round(handoffs[min(len(handoffs) - 1, int(q * len(handoffs)))] * 1000, 3)

    return {
        "handoff_5_agents": {"n": len(handoffs), "p50_ms": pct(0.5), "p99_ms": pct(0.99)},
        "concurrent": {
            "meetings": concurrent,
            "agents": 5,
            "rounds": 3,
            "seconds": round(concurrent_s, 3),
        },
        "large": {"agents": big, "rounds": 2, "seconds": round(big_s, 3)},
    }
