"""The SQL statements the SDK runs, by name: ``queries.sql``, read once at import.

Each statement of the file is a constant here, its name in upper case
(``-- name: send_one_way`` is :data:`SEND_ONE_WAY`), so a use is checked by the type
checker and found by grep. A statement of the file without a constant, or a constant
without a statement, fails the import. The file's header states the casting
convention and which statements live elsewhere, and why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

#: the file, next to this module (a wheel carries it as package data)
PATH: Final = Path(__file__).with_name("queries.sql")

_MARK = "-- name:"
_VALID_NAME = re.compile(r"[a-z][a-z0-9_]*")


class QueryFileError(ValueError):
    """``queries.sql`` is malformed."""


def parse(text: str) -> dict[str, str]:
    """Name -> statement of every ``-- name: <name>`` block of ``text``.

    A block's statement is its lines up to the next ``-- name:`` line, less comment
    lines and blank lines, each stripped of trailing blanks. Raises
    :class:`QueryFileError` for a malformed name, a name given twice, a block
    without a statement, or anything but comments before the first block.
    """
    found: dict[str, str] = {}
    name: str | None = None
    body: list[str] = []

    def close() -> None:
        if name is None:
            return
        if not body:
            raise QueryFileError(f"queries.sql: {name!r} has no statement")
        found[name] = "\n".join(body)

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if line.startswith(_MARK):
            close()
            name, body = line[len(_MARK) :].strip(), []
            if not _VALID_NAME.fullmatch(name):
                raise QueryFileError(f"queries.sql:{number}: bad name {name!r}")
            if name in found:
                raise QueryFileError(f"queries.sql:{number}: {name!r} is defined twice")
            continue
        if not line.strip() or line.lstrip().startswith("--"):
            continue
        if name is None:
            raise QueryFileError(f"queries.sql:{number}: a statement without a name")
        body.append(line)
    close()
    return found


#: every statement, by name
QUERIES: Final[Mapping[str, str]] = MappingProxyType(parse(PATH.read_text(encoding="utf-8")))

_claimed: set[str] = set()


def _q(name: str) -> str:
    try:
        statement = QUERIES[name]
    except KeyError:
        raise QueryFileError(f"queries.sql has no statement {name!r}") from None
    _claimed.add(name)
    return statement


# organizations and agents
REGISTER_ORGANIZATION: Final = _q("register_organization")
GET_ORGANIZATION: Final = _q("get_organization")
REGISTER_AGENT: Final = _q("register_agent")
GET_AGENT: Final = _q("get_agent")
AGENT_CHANNEL: Final = _q("agent_channel")
AGENT_CHANNELS_OF: Final = _q("agent_channels_of")
AGENT_CHANNELS: Final = _q("agent_channels")

# the LISTEN connection
LISTEN: Final = _q("listen")
UNLISTEN: Final = _q("unlisten")
NOTIFY: Final = _q("notify")
LISTENER_BACKEND_PID: Final = _q("listener_backend_pid")
LISTENING_CHANNELS: Final = _q("listening_channels")

# the server
DATABASE_EXISTS: Final = _q("database_exists")
CREATE_DATABASE: Final = _q("create_database")
SCHEMA_PRESENT: Final = _q("schema_present")

# one-way messages
SEND_ONE_WAY: Final = _q("send_one_way")
SEND_ONE_WAY_MANY: Final = _q("send_one_way_many")
DELIVERY_OUTCOME: Final = _q("delivery_outcome")

# workers and push delivery
REGISTER_WORKER: Final = _q("register_worker")
SERVE_AGENTS: Final = _q("serve_agents")
HOLD_WORKER: Final = _q("hold_worker")
RELEASE_WORKER: Final = _q("release_worker")
RELEASE_DELIVERIES: Final = _q("release_deliveries")
UNREGISTER_WORKER: Final = _q("unregister_worker")
HEARTBEAT: Final = _q("heartbeat")
CLAIM_DELIVERIES: Final = _q("claim_deliveries")
EXTEND_LEASES: Final = _q("extend_leases")
NEXT_DELIVERY_AT: Final = _q("next_delivery_at")
ACK_DELIVERIES: Final = _q("ack_deliveries")
FAIL_DELIVERY: Final = _q("fail_delivery")

# asynchronous conversations
ASYNC_SEND: Final = _q("async_send")
READ_UNREAD: Final = _q("read_unread")
CONFIRM_READ: Final = _q("confirm_read")
REJECT_UNREAD: Final = _q("reject_unread")
PEEK_UNREAD: Final = _q("peek_unread")
INBOX_MESSAGES: Final = _q("inbox_messages")

# synchronous conversations
SYNC_SEND: Final = _q("sync_send")
SYNC_RESULT: Final = _q("sync_result")
SYNC_REPLY: Final = _q("sync_reply")
CANCEL_WAIT: Final = _q("cancel_wait")
END_CONVERSATION: Final = _q("end_conversation")
GET_SESSION: Final = _q("get_session")
GET_MESSAGE: Final = _q("get_message")

# meetings
CREATE_MEETING: Final = _q("create_meeting")
ATTEND_MEETING: Final = _q("attend_meeting")
START_MEETING: Final = _q("start_meeting")
SPEAK: Final = _q("speak")
LEAVE_MEETING: Final = _q("leave_meeting")
END_MEETING: Final = _q("end_meeting")
MEETING_STATUS: Final = _q("meeting_status")
MEETING_PARTICIPANT_LIST: Final = _q("meeting_participant_list")
GET_MEETING: Final = _q("get_meeting")
MEETING_TURN: Final = _q("meeting_turn")
MEETING_HISTORY: Final = _q("meeting_history")
EXPIRE_TURNS: Final = _q("expire_turns")
NEXT_TURN_DEADLINE: Final = _q("next_turn_deadline")
MEETING_EVENTS_MAX_SEQ: Final = _q("meeting_events_max_seq")
MEETING_EVENTS_AFTER: Final = _q("meeting_events_after")

# retention
PRUNE_HORIZON: Final = _q("prune_horizon")
PRUNE_MEETINGS: Final = _q("prune_meetings")
PRUNE_MESSAGES: Final = _q("prune_messages")
PRUNE_SESSIONS: Final = _q("prune_sessions")

# roles and access
FORMAT_STATEMENT: Final = _q("format_statement")
ROLE_EXISTS: Final = _q("role_exists")
BIND_AGENT: Final = _q("bind_agent")
BIND_ORGANIZATION: Final = _q("bind_organization")
ALLOW_CONTACT: Final = _q("allow_contact")
REVOKE_CONTACT: Final = _q("revoke_contact")
ROLE_MAP: Final = _q("role_map")
CONTACT_LIST: Final = _q("contact_list")

# `amp status`
STATUS_CONVERSATIONS: Final = _q("status_conversations")
STATUS_MEETINGS: Final = _q("status_meetings")
STATUS_INBOXES: Final = _q("status_inboxes")
STATUS_ONLINE: Final = _q("status_online")
STATUS_FAILED_DELIVERIES: Final = _q("status_failed_deliveries")
WATCH_MESSAGE: Final = _q("watch_message")
WATCH_MEETING_EVENT: Final = _q("watch_meeting_event")

# `amp mcp`
MCP_CLAIM_INBOX: Final = _q("mcp_claim_inbox")
MCP_READ_INBOX: Final = _q("mcp_read_inbox")
MCP_PEEK_INBOX: Final = _q("mcp_peek_inbox")
MCP_PENDING_PUSHED: Final = _q("mcp_pending_pushed")
MCP_AGENT_ORGANIZATION: Final = _q("mcp_agent_organization")
MCP_LIST_AGENTS: Final = _q("mcp_list_agents")
MCP_PENDING_QUESTIONS: Final = _q("mcp_pending_questions")
MCP_QUESTIONS_FROM: Final = _q("mcp_questions_from")
MCP_MY_MEETINGS: Final = _q("mcp_my_meetings")

_unclaimed = sorted(QUERIES.keys() - _claimed)
if _unclaimed:
    raise QueryFileError(f"queries.sql has statements without a constant here: {_unclaimed}")
del _unclaimed
