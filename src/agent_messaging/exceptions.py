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


class SessionAlreadyExistsError(SessionError):
    """A conversation of that pair and type is already live.

    In the planning hierarchy; conversations here are found-or-created by the SQL
    functions (``amp.sync_send``, ``amp.async_send``), so no call raises it today.
    """


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


class InvalidMeetingError(InvalidInputError, MeetingError):
    """The meeting asked for is invalid (an empty or duplicate invitation list, a
    non-positive turn duration). Also an :class:`InvalidInputError`. Nothing was stored."""

    sqlstate = "AM046"


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


class AccessDeniedError(AgentMessagingError, PermissionError):
    """The connection's database role may not act as that agent, read that meeting
    or message, use that worker, or administer access (``amp.*`` raised AM060).
    Nothing was stored."""

    sqlstate = "AM060"


class ContactNotAllowedError(AccessDeniedError):
    """The sender's and the recipient's organizations are both bound to roles and
    no ``amp.allow_contact`` lets the one contact the other (AM061). Nothing was
    stored."""

    sqlstate = "AM061"


class HandlerError(AgentMessagingError):
    """Base of handler errors."""


class HandlerNotRegisteredError(HandlerError):
    """No handler is registered in this process for the agent."""


class HandlerExecutionError(HandlerError):
    """A handler raised. In-process (``resume_agent_handler``) the original exception
    is the ``__cause__``; for a pushed message that was dead-lettered
    (``one_way.wait_delivered``) ``last_error`` is the handler's last error, as stored.
    """

    def __init__(
        self,
        message: str,
        *,
        message_id: object = None,
        last_error: str | None = None,
        attempts: int | None = None,
    ) -> None:
        super().__init__(message)
        #: the message whose handler failed, when known
        self.message_id = message_id
        #: the handler's last error as recorded in ``amp.messages.last_error``
        self.last_error = last_error
        #: delivery attempts made
        self.attempts = attempts


class AgentMessagingTimeoutError(AgentMessagingError, builtins.TimeoutError):
    """A wait ran out of time: the planning's ``TimeoutError``, under a name that
    does not shadow the built-in (of which it is a subclass).

    ``agent_messaging.TimeoutError`` remains importable as an alias of this class,
    but is left out of ``__all__``, so ``from agent_messaging import *`` never
    shadows :class:`builtins.TimeoutError`.
    """


#: The planning's name; an alias, not exported by ``import *``.
TimeoutError = AgentMessagingTimeoutError


class ConversationTimeoutError(AgentMessagingTimeoutError):
    """``send_and_wait`` got no reply in time; the wait was cancelled in SQL."""


class MeetingTimeoutError(AgentMessagingTimeoutError):
    """``attend_meeting`` or ``speak`` did not get the turn back in time."""


class DatabaseUnavailableError(AgentMessagingError):
    """The SDK could not get a connection: the server is unreachable (refused, no
    answer within ``config.connect_timeout``, unknown host), refuses more clients
    (``max_connections``), rejects the login or database, or every connection of the
    pool stayed busy for ``config.pool_timeout``. Nothing was executed."""


class ConnectionLostError(AgentMessagingError):
    """The connection broke (or the server stopped answering) during a call.

    ``outcome_unknown`` is true when the call may have written: the statement may
    have committed before the answer was lost. Retry a send with the same
    ``idempotency_key`` to get the original message back instead of a second one.
    """

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        #: whether the call may have taken effect on the server
        self.outcome_unknown = outcome_unknown


class StatementTimeoutError(AgentMessagingError, builtins.TimeoutError):
    """The server cancelled the statement: it ran longer than
    ``config.statement_timeout``, waited longer than ``config.lock_timeout`` for a
    lock, or the call's deadline passed and the SDK cancelled it. The statement was
    rolled back: nothing was changed."""


class TransactionError(AgentMessagingError):
    """A call that cannot run inside ``sdk.transaction()`` (``send_and_wait``, which
    waits for a reply that cannot come before the commit), a transaction used after
    its block, or one that was rolled back instead of committed because a statement
    in it failed."""


class DatabaseError(AgentMessagingError):
    """Any other error of the server or the driver that is not an ``amp`` error
    (a schema that was never migrated, say); the text is the server's."""


#: Errors after which the same call may succeed later (the server is back, a lock is
#: free): waits ride them out until their own deadline.
TRANSIENT_ERRORS: tuple[type[AgentMessagingError], ...] = (
    DatabaseUnavailableError,
    ConnectionLostError,
    StatementTimeoutError,
)


class SpeakingTimeoutError(MeetingTimeoutError):
    """``speak`` stored the message, but the speaker's next turn did not come within
    ``timeout``. A :class:`MeetingTimeoutError` (what the planning documents for
    ``speak``), named as in the planning hierarchy."""


class DeliveryTimeoutError(AgentMessagingTimeoutError):
    """``one_way.wait_delivered`` ran out of time: the message is still pending."""


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
        InvalidMeetingError,
        HostCannotLeaveError,
        DeliveryError,
        AccessDeniedError,
        ContactNotAllowedError,
    )
    if cls.sqlstate is not None
}

# psqlpy hands over the server's message text but not the SQLSTATE, so amp._raise_error
# repeats the code in the HINT: "...ERROR: <message>\nHINT: amp error AM020". The driver
# prints the HINT last, so only a text that *ends* with that line carries a code: a
# message that quotes a caller's value containing "HINT: amp error AM045" cannot.
_HINT_RE = re.compile(r"\nHINT: amp error (AM\d{3})\s*\Z")
_ERROR_RE = re.compile(r"(?:ERROR|FATAL|PANIC): ")


def amp_error(text: str) -> AgentMessagingError | None:
    """The ``amp`` error a driver error text carries, or ``None`` if it is not one."""
    code = _HINT_RE.search(text)
    if code is None or code.group(1) not in SQLSTATE_EXCEPTIONS:
        return None
    body = text[: code.start()]
    start = _ERROR_RE.search(body)
    message = body[start.end() :] if start else body
    return SQLSTATE_EXCEPTIONS[code.group(1)](message.strip())


def from_database_error(error: Exception) -> Exception:
    """Translate a driver exception raised by an ``amp.*`` call.

    Returns the matching :class:`AgentMessagingError` subclass instance, or a
    :class:`DatabaseError` with the server's text when it is not an ``amp`` error.
    """
    if isinstance(error, AgentMessagingError):
        return error
    text = str(error)
    return amp_error(text) or DatabaseError(text)
