"""NOTIFY payloads: tiny JSON objects (kind and ids; content only in a sync reply's
hint and in a meeting turn's hint to its new speaker, both on the agent's own channel,
unless the database is set not to carry it: ``amp.notify_content = off``).

They are wake-up hints; whoever receives one re-reads the tables. Parsed into a
pydantic discriminated union on ``kind``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, Field, TypeAdapter, ValidationError


class Ping(BaseModel):
    """The dispatcher's NOTIFY round trip to itself (listener health check)."""

    kind: Literal["ping"]
    token: str


class MessageStored(BaseModel):
    """A message for the agent of this channel was stored (or became deliverable)."""

    kind: Literal["message"]
    message_id: UUID
    message_type: str
    session_id: UUID | None = None
    meeting_id: UUID | None = None
    #: the request a sync reply answers
    reply_to: UUID | None = None
    #: a sync reply's content, when it fits and the database carries content
    #: (unless ``amp.notify_content = off``)
    reply: CarriedContent | None = None
    #: messages stored for this agent in one batch (``amp.send_one_way_many``), of
    #: which ``message_id`` is the first: a batch wakes each recipient once
    count: int = 1
    #: direct delivery: the worker the message was handed to as it was stored (leased
    #: to it), with what its handler needs; the other fields below come with it
    worker: UUID | None = None
    attempt: int = 1
    sender: str | None = None
    sender_name: str | None = None
    recipient: str | None = None
    recipient_name: str | None = None
    content: Any = None
    metadata: dict[str, Any] | None = None


class CarriedContent(BaseModel):
    """Message content carried in a hint (committed: the hint is sent on commit)."""

    content: Any


class DeliveryFinished(BaseModel):
    """Pushed messages this agent sent were delivered, or one failed for good: one
    message (``message_id``), or ``count`` of them acknowledged in one batch."""

    kind: Literal["delivery"]
    status: str
    message_id: UUID | None = None
    count: int = 1


class SessionChanged(BaseModel):
    """A conversation of this agent changed state (ended, wait cancelled)."""

    kind: Literal["session"]
    session_id: UUID
    status: str


class MeetingChanged(BaseModel):
    """A meeting changed: the turn moved, someone joined or left, it ended."""

    kind: Literal["meeting"]
    meeting_id: UUID
    status: str
    event: str | None = None
    speaker_id: UUID | None = None
    #: seconds left in the current turn when notified (absent: no deadline)
    turn_seconds: float | None = None


class TurnGiven(BaseModel):
    """The turn of a meeting went to the agent of this channel (``amp._meeting_hand_over``)."""

    kind: Literal["turn"]
    meeting_id: UUID
    #: what was said in the meeting since the agent last spoke, that message included,
    #: as ``amp.meeting_history`` rows with the content as JSON text (absent: it did
    #: not fit in the payload)
    messages: list[dict[str, Any]] | None = None


class MeetingEventRecorded(BaseModel):
    """A meeting event was recorded (global channel ``amp_meeting_events``)."""

    kind: Literal["meeting_event"]
    meeting_id: UUID
    seq: int
    event: str
    agent_id: UUID | None = None


class SchemaMigrated(BaseModel):
    """A migration committed (global channel ``amp_migrations``)."""

    kind: Literal["migration"]
    revision: str
    breaking: bool = False
    direction: str = "upgrade"
    sdk_version: str = "?"


class Unknown(BaseModel):
    """A payload this version does not know (sent by a newer client, say)."""

    kind: str


Known = (
    Ping
    | MessageStored
    | DeliveryFinished
    | SessionChanged
    | MeetingChanged
    | TurnGiven
    | MeetingEventRecorded
    | SchemaMigrated
)
Notification = Annotated[Known, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[Known] = TypeAdapter(Notification)


def parse(payload: str) -> Known | Unknown:
    """Parse a NOTIFY payload; anything unrecognised becomes :class:`Unknown`."""
    try:
        return _ADAPTER.validate_json(payload)
    except ValidationError:
        try:
            return Unknown.model_validate_json(payload)
        except ValidationError:
            return Unknown(kind="invalid")


MessageStored.model_rebuild()
