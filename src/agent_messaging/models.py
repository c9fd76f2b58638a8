"""Pydantic models of what the SDK hands back to users.

The planning's models (``Organization``, ``Agent``, ``Session``, ``Meeting``,
``MeetingParticipant``, ``Message[T]``, ``MessageContext``, ``MeetingStatusResponse``)
and enums (``SessionType``, ``SessionStatus``, ``MeetingStatus``,
``ParticipantStatus``, ``MeetingEvent``), plus what this SDK adds: the turn signal,
meeting history entries, and the protocol's own message types (a meeting invitation,
a system message), which are never validated as the user's ``T``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, computed_field
from pydantic_core import core_schema

T = TypeVar("T")


class _JsonObject(dict[str, Any]):
    """A ``dict`` subclass pydantic validates from (and dumps as) a JSON object."""

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls, handler.generate_schema(dict[str, Any])
        )


class AttrDict(_JsonObject):
    """A JSON object with attribute access: ``message.text`` is ``message["text"]``.

    What an untyped ``AgentMessaging()`` (no ``[T]``) hands to handlers and returns
    for JSON objects, so the planning's examples (``message.text``) work without a
    model; nested objects are ``AttrDict`` too. Still a ``dict`` in every other way,
    so a key named like a ``dict`` method (``items``, ``keys``...) needs ``message["items"]``.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def wrap(cls, value: Any) -> Any:
        """``value`` with every JSON object in it (recursively) made an ``AttrDict``."""
        if isinstance(value, dict):
            return cls({k: cls.wrap(v) for k, v in value.items()})
        if isinstance(value, list):
            return [cls.wrap(v) for v in value]
        return value


class MeetingInvitation(_JsonObject):
    """The content of a pushed meeting invitation (``context.is_meeting_message``).

    A protocol message, not the user's ``T``: a typed SDK receives this type for
    invitations. A ``dict`` of the stored JSON (``message["meeting_id"]`` is the id as
    text) with typed attributes.
    """

    @property
    def meeting_id(self) -> UUID:
        """The meeting's id."""
        return UUID(str(self["meeting_id"]))

    @property
    def host_external_id(self) -> str:
        """Who invited (the host)."""
        return str(self["host_external_id"])

    @property
    def participants(self) -> list[str]:
        """The invitation list, in round-robin order."""
        return [str(p) for p in self.get("participants") or []]

    @property
    def turn_duration(self) -> float | None:
        """Seconds per turn, ``None`` when turns never expire."""
        value = self.get("turn_duration_seconds")
        return None if value is None else float(value)


class SystemMessage(_JsonObject):
    """The content of a meeting's system message (a join, leave, turn timeout, the
    end): a ``dict`` ``{"event", "agent_external_id", "text"}`` with attributes."""

    @property
    def event(self) -> str:
        """``agent_joined``, ``agent_left``, ``agent_timed_out`` or ``meeting_ended``."""
        return str(self["event"])

    @property
    def agent_external_id(self) -> str | None:
        """The agent it is about."""
        value = self.get("agent_external_id")
        return None if value is None else str(value)

    @property
    def text(self) -> str:
        """A human-readable line."""
        return str(self.get("text") or "")


class SessionType(StrEnum):
    """The kinds of conversation."""

    SYNC = "sync"
    ASYNC = "async"


class SessionStatus(StrEnum):
    """A conversation's state: active, waiting (someone blocks in it), ended."""

    ACTIVE = "active"
    WAITING = "waiting"
    ENDED = "ended"


class MeetingStatus(StrEnum):
    """A meeting's state: created, ready (every invitee attended), active, ended."""

    CREATED = "created"
    READY = "ready"
    ACTIVE = "active"
    ENDED = "ended"


class ParticipantStatus(StrEnum):
    """A participant's state: invited, attending, waiting, speaking, left."""

    INVITED = "invited"
    ATTENDING = "attending"
    WAITING = "waiting"
    SPEAKING = "speaking"
    LEFT = "left"


class Organization(BaseModel):
    """A registered organization."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: UUID
    external_id: str
    name: str
    created_at: datetime
    updated_at: datetime


class Agent(BaseModel):
    """A registered agent."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: UUID
    external_id: str
    organization_id: UUID
    name: str
    created_at: datetime
    updated_at: datetime


class Session(BaseModel):
    """A conversation of two agents (``AgentMessaging.get_session``). The pair is
    stored in canonical order (``agent_a_id < agent_b_id``)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: UUID
    agent_a_id: UUID
    agent_b_id: UUID
    session_type: SessionType
    status: SessionStatus
    #: the agent blocked in ``send_and_wait``, if any
    locked_agent_id: UUID | None = None
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None


class Meeting(BaseModel):
    """A meeting's row (``MeetingManager.get_meeting``)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: UUID
    host_id: UUID
    status: MeetingStatus
    current_speaker_id: UUID | None = None
    #: seconds per turn; ``None``: turns never expire
    turn_duration: float | None = None
    turn_started_at: datetime | None = None
    turn_deadline: datetime | None = None
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None


class Message(BaseModel, Generic[T]):
    """A stored message (``AgentMessaging.get_message``).

    ``content`` is the user's ``T`` for what agents said; for the protocol's own
    messages it is a :class:`MeetingInvitation` or :class:`SystemMessage`.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: UUID
    seq: int
    sender_id: UUID | None = None
    sender_external_id: str | None = None
    recipient_id: UUID | None = None
    recipient_external_id: str | None = None
    session_id: UUID | None = None
    meeting_id: UUID | None = None
    message_type: str
    content: Any
    read_at: datetime | None = None
    created_at: datetime
    metadata: dict[str, Any] | None = None
    #: pending, delivered or failed for pushed messages; ``None`` for pulled ones
    delivery_status: str | None = None

    @property
    def sender(self) -> str | None:
        """The sender's external id (``None`` for a system message)."""
        return self.sender_external_id


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

    model_config = ConfigDict(frozen=True, defer_build=True)

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

    model_config = ConfigDict(frozen=True, defer_build=True)

    agent_external_id: str
    join_order: int
    status: ParticipantStatus
    is_host: bool
    last_spoke_seq: int
    joined_at: datetime | None = None
    left_at: datetime | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def is_locked(self) -> bool:
        """Blocked until its turn (the planning's lock): attending before the start,
        or waiting while someone else speaks."""
        return self.status in (ParticipantStatus.ATTENDING, ParticipantStatus.WAITING)


class MeetingStatusResponse(BaseModel):
    """The state of a meeting (``MeetingManager.get_meeting_status``)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    meeting_id: UUID
    status: MeetingStatus
    host_external_id: str
    current_speaker_external_id: str | None = None
    turn_duration: float | None = None
    turn_started_at: datetime | None = None
    turn_deadline: datetime | None = None
    #: participants who have not left
    participant_count: int
    participants: list[MeetingParticipant]
    created_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def current_speaker(self) -> str | None:
        """Alias of ``current_speaker_external_id`` (the planning's examples)."""
        return self.current_speaker_external_id

    @property
    def state(self) -> MeetingStatus:
        """Alias of ``status`` (the planning's examples)."""
        return self.status

    @property
    def participant_ids(self) -> list[str]:
        """The external ids of the participants who have not left (the planning's
        ``participants: list[str]``)."""
        return [p.agent_external_id for p in self.participants if p.status != "left"]


class MeetingMessage(BaseModel, Generic[T]):
    """One entry of a meeting's history, ordered by ``seq``.

    ``message_type`` is ``'meeting'`` (something an agent said: ``content`` is the
    message as ``T``, ``sender_external_id`` who said it) or ``'system'`` (a join,
    leave, turn timeout or the end: ``content`` is ``None``, ``system`` holds the raw
    JSON ``{"event", "agent_external_id", "text"}``).
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    seq: int
    message_id: UUID
    message_type: str
    sender_external_id: str | None = None
    content: T | None = None
    system: SystemMessage | None = None
    #: spoken after the speaker's turn had expired (it did not take the turn)
    is_late: bool = False
    created_at: datetime
    #: why ``content`` is ``None`` for a stored message that could not be decoded
    error: str | None = None

    @property
    def id(self) -> UUID:
        """Alias of ``message_id`` (the planning's ``Message.id``)."""
        return self.message_id

    @property
    def sender(self) -> str | None:
        """Alias of ``sender_external_id`` (``None`` for a system message)."""
        return self.sender_external_id


class TurnSignal(BaseModel, Generic[T]):
    """What ``attend_meeting`` and ``speak`` return when they stop waiting."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    meeting_id: UUID
    #: the caller holds the turn now: it should ``speak``
    your_turn: bool
    meeting_ended: bool
    current_speaker_external_id: str | None = None
    #: everything said by others since the caller last spoke (system messages too)
    messages: list[MeetingMessage[T]]
