"""Organizations and agents through the SDK."""

from __future__ import annotations

import re

import pytest

from agent_messaging import (
    AgentAlreadyExistsError,
    AgentMessaging,
    AgentNotFoundError,
    InvalidInputError,
    OrganizationAlreadyExistsError,
    OrganizationNotFoundError,
)

SDK = AgentMessaging[dict[str, object]]


async def test_register_and_get(sdk: SDK) -> None:
    org_id = await sdk.register_organization("org1", "Org One")
    agent_id = await sdk.register_agent("alice", "org1", "Alice")
    org = await sdk.get_organization("org1")
    agent = await sdk.get_agent("alice")
    assert (org.id, org.name) == (org_id, "Org One")
    assert (agent.id, agent.name, agent.organization_id) == (agent_id, "Alice", org_id)


async def test_name_defaults_to_external_id(sdk: SDK) -> None:
    await sdk.register_organization("org1")
    await sdk.register_agent("bob", "org1")
    assert (await sdk.get_agent("bob")).name == "bob"


async def test_duplicates_are_refused(sdk: SDK) -> None:
    await sdk.register_organization("org1", "Org One")
    await sdk.register_agent("alice", "org1", "Alice")
    with pytest.raises(OrganizationAlreadyExistsError, match="org1"):
        await sdk.register_organization("org1", "Again")
    with pytest.raises(AgentAlreadyExistsError, match="alice"):
        await sdk.register_agent("alice", "org1", "Alice again")
    # nothing was half-changed
    assert (await sdk.get_agent("alice")).name == "Alice"
    assert (await sdk.get_organization("org1")).name == "Org One"


async def test_unknown_ids(sdk: SDK) -> None:
    with pytest.raises(AgentNotFoundError):
        await sdk.get_agent("nobody")
    with pytest.raises(OrganizationNotFoundError):
        await sdk.get_organization("nowhere")
    with pytest.raises(OrganizationNotFoundError):
        await sdk.register_agent("carol", "nowhere", "Carol")
    with pytest.raises(AgentNotFoundError):
        await sdk.get_agent("carol")


@pytest.mark.parametrize("bad", ["", "   "])
async def test_empty_ids(sdk: SDK, bad: str) -> None:
    with pytest.raises(InvalidInputError):
        await sdk.register_organization(bad, "x")
    await sdk.register_organization("org1")
    with pytest.raises(InvalidInputError):
        await sdk.register_agent(bad, "org1", "x")
    with pytest.raises(InvalidInputError):
        await sdk.register_agent("dave", bad, "x")
    with pytest.raises(InvalidInputError):
        await sdk.get_agent(bad)
    count = await sdk.db.fetch_value("SELECT count(*) FROM amp.agents")
    assert count == 0


async def test_concurrent_registration_has_one_winner(sdk: SDK) -> None:
    import asyncio

    await sdk.register_organization("org1")
    results = await asyncio.gather(
        *(sdk.register_agent("racer", "org1") for _ in range(8)), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, AgentAlreadyExistsError)]
    assert len(winners) == 1 and len(losers) == 7


async def test_agent_channel_rule_lives_in_sql(sdk: SDK) -> None:
    agent_id = (await sdk.register_organization("org1"), await sdk.register_agent("alice", "org1"))[
        1
    ]
    channel = await sdk.db.fetch_value("SELECT amp.agent_channel($1)", ["alice"])
    # random, not derived from the agent's (public) id, and stable
    assert re.fullmatch(r"amp_agent_[0-9a-f]{32}", channel)
    assert channel != f"amp_agent_{agent_id.hex}"
    assert await sdk.db.fetch_value("SELECT amp.agent_channel($1)", ["alice"]) == channel
    with pytest.raises(AgentNotFoundError):
        await sdk.db.fetch_value("SELECT amp.agent_channel($1)", ["ghost"])
