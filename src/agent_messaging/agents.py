"""Organizations and agents: the calls of ``sql/agents.sql``."""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from . import queries, validation
from .database import Database
from .models import Agent, Organization


async def register_organization(db: Database, external_id: str, name: str | None) -> Organization:
    """``amp.register_organization``."""
    row = await db.fetch_one(queries.REGISTER_ORGANIZATION, [external_id, name])
    return Organization.model_validate(row)


async def get_organization(db: Database, external_id: str) -> Organization:
    """``amp.get_organization``."""
    row = await db.fetch_one(queries.GET_ORGANIZATION, [external_id])
    return Organization.model_validate(row)


async def register_agent(
    db: Database, external_id: str, organization_external_id: str, name: str | None
) -> Agent:
    """``amp.register_agent``."""
    row = await db.fetch_one(queries.REGISTER_AGENT, [external_id, organization_external_id, name])
    return Agent.model_validate(row)


async def get_agent(db: Database, external_id: str) -> Agent:
    """``amp.get_agent``."""
    row = await db.fetch_one(queries.GET_AGENT, [external_id])
    return Agent.model_validate(row)


async def agent_channel(db: Database, external_id: str) -> str:
    """``amp.agent_channel``: the channel an agent's notifications arrive on."""
    return str(await db.fetch_value(queries.AGENT_CHANNEL, [external_id]))


class Directory:
    """Organizations and agents of one SDK instance, with the channel cache (an
    agent's id, and so its channel, never changes). ``db`` gives the connector
    (raising while the SDK is not initialized)."""

    def __init__(self, db: Callable[[], Database]) -> None:
        self._db = db
        self._channels: dict[str, str] = {}

    async def register_organization(self, external_id: str, name: str | None = None) -> UUID:
        """Register an organization; returns its id."""
        validation.external_id("organization external id", external_id)
        validation.display_name(name)
        return (await register_organization(self._db(), external_id, name)).id

    async def register_agent(
        self, external_id: str, organization_external_id: str, name: str | None = None
    ) -> UUID:
        """Register an agent of an organization; returns its id."""
        validation.external_id("agent external id", external_id)
        validation.external_id("organization external id", organization_external_id)
        validation.display_name(name)
        return (await register_agent(self._db(), external_id, organization_external_id, name)).id

    async def get_organization(self, external_id: str) -> Organization:
        """The organization with that external id."""
        validation.external_id("organization external id", external_id)
        return await get_organization(self._db(), external_id)

    async def get_agent(self, external_id: str) -> Agent:
        """The agent with that external id."""
        validation.external_id("agent external id", external_id)
        return await get_agent(self._db(), external_id)

    def remember_channel(self, external_id: str, channel: str) -> None:
        """An agent's channel, read along with another call."""
        self._channels[external_id] = channel

    async def agent_channel(self, external_id: str) -> str:
        """The channel an agent's notifications arrive on (``amp.agent_channel``),
        cached."""
        channel = self._channels.get(external_id)
        if channel is None:
            validation.external_id("agent external id", external_id)
            channel = await agent_channel(self._db(), external_id)
            self._channels[external_id] = channel
        return channel
