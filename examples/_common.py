"""Shared by the examples: register what a scenario needs, tolerating reruns."""

from __future__ import annotations

import contextlib
from typing import Any

from agent_messaging import (
    AgentAlreadyExistsError,
    AgentMessaging,
    OrganizationAlreadyExistsError,
)


async def ensure_agents(sdk: AgentMessaging[Any], org: str, *agents: str) -> None:
    """Register ``org`` and ``agents`` unless a previous run already did."""
    with contextlib.suppress(OrganizationAlreadyExistsError):
        await sdk.register_organization(org, org.title())
    for agent in agents:
        with contextlib.suppress(AgentAlreadyExistsError):
            await sdk.register_agent(agent, org, agent.replace("-", " ").title())
