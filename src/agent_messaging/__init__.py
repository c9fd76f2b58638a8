"""agent-messaging: a PostgreSQL-native protocol and SDK for agents that talk to each other.

The protocol lives in PostgreSQL (``amp.*`` functions, triggers, NOTIFY); this package
calls those functions and awaits notifications.
"""

from .client import AgentMessaging
from .config import Config
from .exceptions import (
    AgentAlreadyExistsError,
    AgentMessagingError,
    AgentNotFoundError,
    AgentNotInMeetingError,
    ConversationEndedError,
    ConversationTimeoutError,
    DeliveryError,
    HandlerError,
    HandlerExecutionError,
    HandlerNotRegisteredError,
    HostCannotLeaveError,
    InvalidInputError,
    InvalidMeetingStateError,
    InvalidSessionStateError,
    MeetingError,
    MeetingNotFoundError,
    MeetingTimeoutError,
    NotCurrentSpeakerError,
    NotMeetingHostError,
    OrganizationAlreadyExistsError,
    OrganizationNotFoundError,
    SessionError,
    SessionNotFoundError,
    TimeoutError,
)
from .inbox import InboxMessage
from .meetings import MeetingManager
from .models import (
    Agent,
    MeetingEvent,
    MeetingMessage,
    MeetingParticipant,
    MeetingStatusResponse,
    MessageContext,
    Organization,
    TurnSignal,
)

__all__ = [
    "Agent",
    "AgentAlreadyExistsError",
    "AgentMessaging",
    "AgentMessagingError",
    "AgentNotFoundError",
    "AgentNotInMeetingError",
    "Config",
    "ConversationEndedError",
    "ConversationTimeoutError",
    "DeliveryError",
    "HandlerError",
    "HandlerExecutionError",
    "HandlerNotRegisteredError",
    "HostCannotLeaveError",
    "InboxMessage",
    "InvalidInputError",
    "InvalidMeetingStateError",
    "InvalidSessionStateError",
    "MeetingError",
    "MeetingEvent",
    "MeetingManager",
    "MeetingMessage",
    "MeetingNotFoundError",
    "MeetingParticipant",
    "MeetingStatusResponse",
    "MeetingTimeoutError",
    "MessageContext",
    "NotCurrentSpeakerError",
    "NotMeetingHostError",
    "Organization",
    "OrganizationAlreadyExistsError",
    "OrganizationNotFoundError",
    "SessionError",
    "SessionNotFoundError",
    "TimeoutError",
    "TurnSignal",
]
