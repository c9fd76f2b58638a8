"""Organizations and agents: the calls of ``sql/agents.sql``."""

from __future__ import annotations

from .database import Database
from .models import Agent, Organization


async def register_organization(db: Database, external_id: str, name: str | None) -> Organization:
    """``amp.register_organization``."""
    row = await db.fetch_one("SELECT * FROM amp.register_organization($1, $2)", [external_id, name])
    return Organization.model_validate(row)


async def get_organization(db: Database, external_id: str) -> Organization:
    """``amp.get_organization``."""
    row = await db.fetch_one("SELECT * FROM amp.get_organization($1)", [external_id])
    return Organization.model_validate(row)


async def register_agent(
    db: Database, external_id: str, organization_external_id: str, name: str | None
) -> Agent:
    """``amp.register_agent``."""
    row = await db.fetch_one(
        "SELECT * FROM amp.register_agent($1, $2, $3)",
        [external_id, organization_external_id, name],
    )
    return Agent.model_validate(row)


async def get_agent(db: Database, external_id: str) -> Agent:
    """``amp.get_agent``."""
    row = await db.fetch_one("SELECT * FROM amp.get_agent($1)", [external_id])
    return Agent.model_validate(row)


async def agent_channel(db: Database, external_id: str) -> str:
    """``amp.agent_channel``: the channel an agent's notifications arrive on."""
    return str(await db.fetch_value("SELECT amp.agent_channel($1)", [external_id]))
