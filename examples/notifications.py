"""A notification system (one-way messages).

A build monitor sends alerts to an on-call agent. The on-call handler receives each
alert exactly as typed (a pydantic model), with its context; alerts are durable and
delivered at least once, so an on-call process that starts later still gets them.

    python examples/notifications.py        # AMP_DATABASE_URL, or the embedded server
"""

from __future__ import annotations

import asyncio
from typing import Literal

from _common import ensure_agents
from pydantic import BaseModel

from agent_messaging import AgentMessaging, MessageContext


class Alert(BaseModel):
    service: str
    severity: Literal["info", "warning", "critical"]
    text: str


ALERTS = [
    Alert(service="api", severity="warning", text="p99 latency above 800 ms"),
    Alert(service="db", severity="critical", text="replica lag 45 s"),
    Alert(service="api", severity="info", text="latency back to normal"),
]


async def main() -> None:
    received: asyncio.Queue[tuple[Alert, MessageContext]] = asyncio.Queue()
    async with AgentMessaging[Alert]() as sdk:
        await ensure_agents(sdk, "ops", "build-monitor", "on-call")

        @sdk.register_handler("on-call")
        async def page(alert: Alert, context: MessageContext) -> None:
            received.put_nowait((alert, context))

        await sdk.serve_handlers()
        for alert in ALERTS:
            await sdk.one_way.send("build-monitor", "on-call", alert)
        for _ in ALERTS:
            alert, context = await asyncio.wait_for(received.get(), 30)
            print(
                f"[{alert.severity:>8}] {alert.service}: {alert.text} "
                f"(from {context.sender_external_id})"
            )


if __name__ == "__main__":
    asyncio.run(main())
