"""Agents for the planning-API tests, each in its own OS process.

    python -m tests.agents.plan_agent DSN AGENT [AGENT ...] [options]

Serves the handlers of the given agents and prints JSON lines: ``ready`` once
served, then per message ``started`` (pid, attempt, message type), ``attended``
for a meeting invitation (after ``attend_meeting`` returned: ``your_turn``,
``meeting_ended``), and ``handled`` when the handler returns. Options:
``--sleep S`` the handler sleeps S seconds (a slow handler), ``--block`` it never
returns (until the process is killed), ``--lease L`` the delivery lease,
``--no-turn-timeout`` this process never expires meeting turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

from agent_messaging import AgentMessaging, Config, MeetingInvitation, MessageContext


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "pid": os.getpid(), **fields}, default=str), flush=True)


async def main(args: argparse.Namespace) -> None:
    config = Config(
        database_url=args.dsn,
        delivery_lease=args.lease,
        poll_interval=1.0,
        listener_check_interval=1.0,
        enable_turn_timeout=not args.no_turn_timeout,
        apply_migrations=False,
    )
    async with AgentMessaging[Any](config) as sdk:
        for agent in args.agents:

            @sdk.register_handler(agent)
            async def handler(message: Any, context: MessageContext, agent: str = agent) -> None:
                emit(
                    "started",
                    agent=agent,
                    id=context.message_id,
                    attempt=context.attempt,
                    type=context.message_type,
                )
                if isinstance(message, MeetingInvitation):
                    signal = await sdk.meeting.attend_meeting(agent, message.meeting_id, 120)
                    emit(
                        "attended",
                        agent=agent,
                        your_turn=signal.your_turn,
                        meeting_ended=signal.meeting_ended,
                    )
                elif args.block:
                    await asyncio.Event().wait()
                elif args.sleep:
                    await asyncio.sleep(args.sleep)
                emit("handled", agent=agent, id=context.message_id, attempt=context.attempt)

        await sdk.serve_handlers()
        emit("ready")
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("agents", nargs="+")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--block", action="store_true")
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--no-turn-timeout", action="store_true")
    asyncio.run(main(parser.parse_args()))
