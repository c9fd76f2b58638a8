"""agent-messaging: a PostgreSQL-native protocol and SDK for agents that talk to each other.

The protocol lives in PostgreSQL (``amp.*`` functions, triggers, NOTIFY); this package
calls those functions and awaits notifications.

Names are loaded on first use (PEP 562): ``from agent_messaging import X`` imports
only the module that defines ``X`` (and what that module needs), so a process that
never uses, say, meetings or transactions does not load their modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .async_conversation import InboxMessage
    from .client import AgentMessaging
    from .config import Config
    from .exceptions import (
        AccessDeniedError,
        AgentAlreadyExistsError,
        AgentMessagingError,
        AgentMessagingTimeoutError,
        AgentNotFoundError,
        AgentNotInMeetingError,
        ConnectionLostError,
        ContactNotAllowedError,
        ConversationEndedError,
        ConversationTimeoutError,
        DatabaseError,
        DatabaseUnavailableError,
        DeliveryError,
        DeliveryTimeoutError,
        HandlerError,
        HandlerExecutionError,
        HandlerNotRegisteredError,
        HostCannotLeaveError,
        InvalidInputError,
        InvalidMeetingError,
        InvalidMeetingStateError,
        InvalidSessionStateError,
        MeetingError,
        MeetingNotFoundError,
        MeetingTimeoutError,
        NotCurrentSpeakerError,
        NotMeetingHostError,
        OrganizationAlreadyExistsError,
        OrganizationNotFoundError,
        SessionAlreadyExistsError,
        SessionError,
        SessionNotFoundError,
        SpeakingTimeoutError,
        StatementTimeoutError,
        TransactionError,
    )
    from .exceptions import TimeoutError as TimeoutError  # the planning's name; not in __all__
    from .meeting_manager import MeetingManager
    from .models import (
        Agent,
        AttrDict,
        Meeting,
        MeetingEvent,
        MeetingInvitation,
        MeetingMessage,
        MeetingParticipant,
        MeetingStatus,
        MeetingStatusResponse,
        Message,
        MessageContext,
        Organization,
        ParticipantStatus,
        Session,
        SessionStatus,
        SessionType,
        SystemMessage,
        TurnSignal,
    )
    from .transaction import Transaction

#: the module that defines each public name
_HOME = {
    "InboxMessage": "async_conversation",
    "AgentMessaging": "client",
    "Config": "config",
    "MeetingManager": "meeting_manager",
    "Transaction": "transaction",
    "TimeoutError": "exceptions",  # the planning's name; not in __all__
}
_HOME.update(
    dict.fromkeys(
        (
            "AccessDeniedError",
            "AgentAlreadyExistsError",
            "AgentMessagingError",
            "AgentMessagingTimeoutError",
            "AgentNotFoundError",
            "AgentNotInMeetingError",
            "ConnectionLostError",
            "ContactNotAllowedError",
            "ConversationEndedError",
            "ConversationTimeoutError",
            "DatabaseError",
            "DatabaseUnavailableError",
            "DeliveryError",
            "DeliveryTimeoutError",
            "HandlerError",
            "HandlerExecutionError",
            "HandlerNotRegisteredError",
            "HostCannotLeaveError",
            "InvalidInputError",
            "InvalidMeetingError",
            "InvalidMeetingStateError",
            "InvalidSessionStateError",
            "MeetingError",
            "MeetingNotFoundError",
            "MeetingTimeoutError",
            "NotCurrentSpeakerError",
            "NotMeetingHostError",
            "OrganizationAlreadyExistsError",
            "OrganizationNotFoundError",
            "SessionAlreadyExistsError",
            "SessionError",
            "SessionNotFoundError",
            "SpeakingTimeoutError",
            "StatementTimeoutError",
            "TransactionError",
        ),
        "exceptions",
    )
)
_HOME.update(
    dict.fromkeys(
        (
            "Agent",
            "AttrDict",
            "Meeting",
            "MeetingEvent",
            "MeetingInvitation",
            "MeetingMessage",
            "MeetingParticipant",
            "MeetingStatus",
            "MeetingStatusResponse",
            "Message",
            "MessageContext",
            "Organization",
            "ParticipantStatus",
            "Session",
            "SessionStatus",
            "SessionType",
            "SystemMessage",
            "TurnSignal",
        ),
        "models",
    )
)


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # found without this function from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


__all__ = [
    "AccessDeniedError",
    "Agent",
    "AgentAlreadyExistsError",
    "AgentMessaging",
    "AgentMessagingError",
    "AgentMessagingTimeoutError",
    "AgentNotFoundError",
    "AgentNotInMeetingError",
    "AttrDict",
    "Config",
    "ConnectionLostError",
    "ContactNotAllowedError",
    "ConversationEndedError",
    "ConversationTimeoutError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DeliveryError",
    "DeliveryTimeoutError",
    "HandlerError",
    "HandlerExecutionError",
    "HandlerNotRegisteredError",
    "HostCannotLeaveError",
    "InboxMessage",
    "InvalidInputError",
    "InvalidMeetingError",
    "InvalidMeetingStateError",
    "InvalidSessionStateError",
    "Meeting",
    "MeetingError",
    "MeetingEvent",
    "MeetingInvitation",
    "MeetingManager",
    "MeetingMessage",
    "MeetingNotFoundError",
    "MeetingParticipant",
    "MeetingStatus",
    "MeetingStatusResponse",
    "MeetingTimeoutError",
    "Message",
    "MessageContext",
    "NotCurrentSpeakerError",
    "NotMeetingHostError",
    "Organization",
    "OrganizationAlreadyExistsError",
    "OrganizationNotFoundError",
    "ParticipantStatus",
    "Session",
    "SessionAlreadyExistsError",
    "SessionError",
    "SessionNotFoundError",
    "SessionStatus",
    "SessionType",
    "SpeakingTimeoutError",
    "StatementTimeoutError",
    "SystemMessage",
    "Transaction",
    "TransactionError",
    "TurnSignal",
]
