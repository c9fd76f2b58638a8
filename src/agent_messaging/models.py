"""Pydantic models of what the SDK hands back to users."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


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


class MeetingParticipant(BaseModel):
    """One participant of a meeting, in round-robin (join) order."""

    model_config = ConfigDict(frozen=True)

    agent_external_id: str
    join_order: int
    #: invited, attending, waiting, speaking or left
    status: str
    is_host: bool
    last_spoke_seq: int
    joined_at: datetime | None = None
    left_at: datetime | None = None


class MeetingStatusResponse(BaseModel):
    """The state of a meeting (``MeetingManager.get_meeting_status``)."""

    model_config = ConfigDict(frozen=True)

    meeting_id: UUID
    #: created, ready, active or ended
    status: str
    host_external_id: str
    current_speaker_external_id: str | None = None
    turn_duration: float | None = None
    turn_deadline: datetime | None = None
    #: participants who have not left
    participant_count: int
    participants: list[MeetingParticipant]
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None


class MeetingMessage(BaseModel, Generic[T]):
    """One entry of a meeting's history, ordered by ``seq``.

    ``message_type`` is ``'meeting'`` (something an agent said: ``content`` is the
    message as ``T``, ``sender_external_id`` who said it) or ``'system'`` (a join,
    leave, turn timeout or the end: ``content`` is ``None``, ``system`` holds the raw
    JSON ``{"event", "agent_external_id", "text"}``).
    """

    model_config = ConfigDict(frozen=True)

    seq: int
    message_id: UUID
    message_type: str
    sender_external_id: str | None = None
    content: T | None = None
    system: dict[str, Any] | None = None
    #: spoken after the speaker's turn had expired (it did not take the turn)
    is_late: bool = False
    created_at: datetime
    #: why ``content`` is ``None`` for a stored message that could not be decoded
    error: str | None = None


class TurnSignal(BaseModel, Generic[T]):
    """What ``attend_meeting`` and ``speak`` return when they stop waiting."""

    model_config = ConfigDict(frozen=True)

    meeting_id: UUID
    #: the caller holds the turn now: it should ``speak``
    your_turn: bool
    meeting_ended: bool
    current_speaker_external_id: str | None = None
    #: everything said by others since the caller last spoke (system messages too)
    messages: list[MeetingMessage[T]]
