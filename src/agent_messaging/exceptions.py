"""The exception hierarchy, and the one place where SQL errors become exceptions.

Every error an ``amp.*`` function raises carries a SQLSTATE of class ``AM`` (listed by
``SELECT * FROM amp.error_codes()``); :data:`SQLSTATE_EXCEPTIONS` maps each code to
exactly one class below.
"""

from __future__ import annotations

import builtins
import re


class AgentMessagingError(Exception):
    """Base of every error raised by agent-messaging."""

    #: the SQLSTATE this error is raised with in SQL, if it comes from SQL
    sqlstate: str | None = None


class InvalidInputError(AgentMessagingError, ValueError):
    """An argument is empty, malformed, too large, not serialisable or not allowed
    (a message to oneself, say). Nothing was stored."""

    sqlstate = "AM001"


class AgentNotFoundError(AgentMessagingError):
    """No agent has that external id."""

    sqlstate = "AM020"


class OrganizationNotFoundError(AgentMessagingError):
    """No organization has that external id."""

    sqlstate = "AM010"


class AgentAlreadyExistsError(AgentMessagingError):
    """An agent with that external id is already registered."""

    sqlstate = "AM021"


class OrganizationAlreadyExistsError(AgentMessagingError):
    """An organization with that external id is already registered."""

    sqlstate = "AM011"


class SessionError(AgentMessagingError):
    """Base of conversation (session) errors."""


class SessionNotFoundError(SessionError):
    """There is no such conversation."""

    sqlstate = "AM030"


class InvalidSessionStateError(SessionError):
    """The conversation is not in a state that allows the call (a reply to an agent
    that is not waiting, say)."""

    sqlstate = "AM031"


class ConversationEndedError(SessionError):
    """The conversation was ended while the caller was waiting in it."""

    sqlstate = "AM032"


class MeetingError(AgentMessagingError):
    """Base of meeting errors."""


class MeetingNotFoundError(MeetingError):
    """No meeting has that id."""

    sqlstate = "AM040"


class NotMeetingHostError(MeetingError):
    """Only the host may do this."""

    sqlstate = "AM041"


class AgentNotInMeetingError(MeetingError):
    """The agent is not a participant of the meeting (or has left it)."""

    sqlstate = "AM042"


class InvalidMeetingStateError(MeetingError):
    """The meeting is not in a state that allows the call."""

    sqlstate = "AM043"


class NotCurrentSpeakerError(MeetingError):
    """Only the current speaker may speak."""

    sqlstate = "AM044"


class HostCannotLeaveError(MeetingError):
    """The host ends a meeting; it cannot leave it."""

    sqlstate = "AM045"


class DeliveryError(AgentMessagingError):
    """A push delivery could not be acknowledged (its lease was lost)."""

    sqlstate = "AM050"


class HandlerError(AgentMessagingError):
    """Base of handler errors."""


class HandlerNotRegisteredError(HandlerError):
    """No handler is registered in this process for the agent."""


class HandlerExecutionError(HandlerError):
    """A handler raised; the original exception is the ``__cause__``."""


class TimeoutError(AgentMessagingError, builtins.TimeoutError):
    """A wait ran out of time. Also a :class:`builtins.TimeoutError`."""


class ConversationTimeoutError(TimeoutError):
    """``send_and_wait`` got no reply in time; the wait was cancelled in SQL."""


class MeetingTimeoutError(TimeoutError):
    """``attend_meeting`` or ``speak`` did not get the turn back in time."""


class SchemaError(AgentMessagingError):
    """The database's ``amp`` schema cannot be used or migrated by this SDK."""


class IncompatibleSchemaError(SchemaError):
    """The database was migrated by a newer agent-messaging with a breaking revision
    this SDK does not know; the message names both versions. Upgrade the SDK (a
    database is never migrated downward)."""


class SchemaOwnershipError(SchemaError):
    """Schema ``amp`` exists but belongs to another role than the one migrating;
    nothing is installed into it."""


class PrereleaseSchemaError(SchemaError):
    """The ``amp`` schema was built by a development version from before the first
    release, holds data and cannot be upgraded; the message says how to recreate it."""


#: SQLSTATE -> exception class, for every code of ``amp.error_codes()``.
SQLSTATE_EXCEPTIONS: dict[str, type[AgentMessagingError]] = {
    cls.sqlstate: cls
    for cls in (
        InvalidInputError,
        OrganizationNotFoundError,
        OrganizationAlreadyExistsError,
        AgentNotFoundError,
        AgentAlreadyExistsError,
        SessionNotFoundError,
        InvalidSessionStateError,
        ConversationEndedError,
        MeetingNotFoundError,
        NotMeetingHostError,
        AgentNotInMeetingError,
        InvalidMeetingStateError,
        NotCurrentSpeakerError,
        HostCannotLeaveError,
        DeliveryError,
    )
    if cls.sqlstate is not None
}

# psqlpy hands over the server's message text but not the SQLSTATE, so amp.raise_error
# repeats the code in the HINT: "HINT: amp error AM020".
_HINT_RE = re.compile(r"HINT:\s*amp error (AM\d{3})")
_MESSAGE_RE = re.compile(r"ERROR:\s*(.*?)(?:\nDETAIL:|\nHINT:|$)", re.DOTALL)


def from_database_error(error: Exception) -> Exception:
    """Translate a driver exception raised by an ``amp.*`` call.

    Returns the matching :class:`AgentMessagingError` subclass instance, or the
    original error unchanged when it is not one of ours.
    """
    text = str(error)
    code = _HINT_RE.search(text)
    if code is None or code.group(1) not in SQLSTATE_EXCEPTIONS:
        return error
    message = _MESSAGE_RE.search(text)
    return SQLSTATE_EXCEPTIONS[code.group(1)](message.group(1).strip() if message else text)
