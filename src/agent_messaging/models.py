"""Pydantic models of what the SDK hands back to users."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict


class Organization(BaseModel):
    """A registered organization."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    external_id: str
    name: str
    created_at: datetime
    updated_at: datetime


class Agent(BaseModel):
    """A registered agent."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    external_id: str
    organization_id: UUID
    name: str
    created_at: datetime
    updated_at: datetime


class MeetingEvent(StrEnum):
    """The kinds of meeting event, as stored in ``amp.meeting_events.event_type``."""

    AGENT_JOINED = "agent_joined"
    AGENT_SPOKE = "agent_spoke"
    AGENT_LEFT = "agent_left"
    AGENT_TIMED_OUT = "agent_timed_out"
    MEETING_STARTED = "meeting_started"
    MEETING_ENDED = "meeting_ended"


class MessageContext(BaseModel):
    """What a handler is told about the message it is given."""

    model_config = ConfigDict(frozen=True)

    message_id: UUID
    sender_external_id: str
    sender_name: str
    recipient_external_id: str
    recipient_name: str
    message_type: str
    session_id: UUID | None = None
    meeting_id: UUID | None = None
    requires_reply: bool = False
    is_meeting_message: bool = False
    metadata: dict[str, Any] | None = None
    #: how many times delivery was attempted, this one included
    attempt: int = 1
