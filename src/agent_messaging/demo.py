"""``amp demo``: a short live scenario against the configured (or embedded) server."""

from __future__ import annotations

import uuid

from rich.console import Console
from rich.table import Table

from .client import AgentMessaging
from .config import Config


async def run_demo(config: Config, console: Console) -> None:
    """Register an organization and two agents, then read them back."""
    suffix = uuid.uuid4().hex[:6]
    async with AgentMessaging[dict[str, object]](config) as sdk:
        org = f"demo-org-{suffix}"
        await sdk.register_organization(org, "Demo Org")
        table = Table(title="registered agents")
        for column in ("external id", "name", "id", "channel"):
            table.add_column(column)
        for name in ("alice", "bob"):
            ext = f"{name}-{suffix}"
            await sdk.register_agent(ext, org, name.title())
            agent = await sdk.get_agent(ext)
            channel = await sdk.db.fetch_value("SELECT amp.agent_channel($1)", [ext])
            table.add_row(agent.external_id, agent.name, str(agent.id), str(channel))
        console.print(table)
        console.print(f"server: {sdk.db.dsn}")
