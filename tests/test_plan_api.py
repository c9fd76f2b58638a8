"""The planning API's models, enums, exceptions and config (issue #10 item 3, #13.9-10)."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any
from uuid import UUID

import pytest
from pydantic import BaseModel

import agent_messaging
from agent_messaging import (
    AgentMessaging,
    AgentMessagingError,
    AgentMessagingTimeoutError,
    AgentNotFoundError,
    AttrDict,
    Config,
    ConversationTimeoutError,
    HandlerNotRegisteredError,
    InvalidInputError,
    InvalidMeetingError,
    InvalidMeetingStateError,
    Meeting,
    MeetingError,
    MeetingEvent,
    MeetingInvitation,
    MeetingStatus,
    MeetingTimeoutError,
    Message,
    MessageContext,
    ParticipantStatus,
    Session,
    SessionAlreadyExistsError,
    SessionError,
    SessionNotFoundError,
    SessionStatus,
    SessionType,
    SpeakingTimeoutError,
    SystemMessage,
)

from .helpers import make_config

WAIT = 30.0


# -- exceptions ----------------------------------------------------------------


def test_timeout_error_is_renamed_and_star_import_does_not_shadow_the_builtin() -> None:
    namespace: dict[str, Any] = {}
    exec("from agent_messaging import *", namespace)
    assert "TimeoutError" not in namespace
    exec("x = TimeoutError", namespace)
    assert namespace["x"] is builtins.TimeoutError
    assert "TimeoutError" not in agent_messaging.__all__
    from agent_messaging import TimeoutError as PlanningTimeoutError

    assert PlanningTimeoutError is AgentMessagingTimeoutError
    assert issubclass(AgentMessagingTimeoutError, builtins.TimeoutError)
    assert issubclass(AgentMessagingTimeoutError, AgentMessagingError)
    for cls in (ConversationTimeoutError, MeetingTimeoutError, SpeakingTimeoutError):
        assert issubclass(cls, PlanningTimeoutError)


def test_planning_exception_hierarchy() -> None:
    assert issubclass(InvalidMeetingError, InvalidInputError)
    assert issubclass(InvalidMeetingError, MeetingError)
    assert issubclass(SessionAlreadyExistsError, SessionError)
    assert issubclass(SpeakingTimeoutError, MeetingTimeoutError)
    for name in agent_messaging.__all__:
        assert getattr(agent_messaging, name) is not None


# -- models and enums ------------------------------------------------------------


def test_enums_compare_with_their_values() -> None:
    assert SessionType.SYNC == "sync" and SessionStatus.WAITING == "waiting"
    assert MeetingStatus.READY == "ready" and ParticipantStatus.SPEAKING == "speaking"


def test_attr_dict_and_protocol_types() -> None:
    record = AttrDict.wrap({"text": "hi", "nested": {"entries": [{"n": 1}]}})
    assert record.text == "hi" and record.nested.entries[0].n == 1 and record["text"] == "hi"
    with pytest.raises(AttributeError):
        _ = record.missing
    invitation = MeetingInvitation(
        {
            "meeting_id": "00000000-0000-0000-0000-000000000001",
            "host_external_id": "h",
            "participants": ["h", "a"],
            "turn_duration_seconds": None,
        }
    )
    assert invitation.meeting_id == UUID(int=1) and invitation.turn_duration is None
    assert SystemMessage({"event": "agent_left", "text": "a left"}).event == "agent_left"


# -- config precedence, one test per rule ----------------------------------------

SERVER_VARS = (
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("AMP_DATABASE_URL", *SERVER_VARS):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_explicit_database_url_beats_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AMP_DATABASE_URL", "postgresql://env@envhost/envdb")
    clean_env.setenv("POSTGRES_HOST", "pghost")
    assert Config(database_url="postgresql://arg@arghost/argdb").explicit_dsn() == (
        "postgresql://arg@arghost/argdb"
    )


def test_explicit_postgres_args_beat_amp_database_url(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AMP_DATABASE_URL", "postgresql://env@envhost/envdb")
    assert Config(postgres_host="db", postgres_db="x").explicit_dsn() == (
        "postgresql://postgres@db:5432/x"
    )


def test_any_postgres_arg_means_a_server_on_localhost(clean_env: pytest.MonkeyPatch) -> None:
    assert Config(postgres_db="agent_messaging_test", postgres_port=5433).explicit_dsn() == (
        "postgresql://postgres@localhost:5433/agent_messaging_test"
    )


def test_explicit_postgres_args_complete_from_postgres_vars(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("POSTGRES_HOST", "envhost")
    clean_env.setenv("POSTGRES_USER", "envuser")
    assert Config(postgres_db="argdb").explicit_dsn() == "postgresql://envuser@envhost:5432/argdb"


def test_explicit_args_beat_environment_for_other_fields(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AMP_MAX_POOL_SIZE", "4")
    clean_env.setenv("AMP_POLL_INTERVAL", "9")
    config = Config(max_pool_size=7)
    assert (config.max_pool_size, config.poll_interval) == (7, 9.0)


def test_amp_database_url_beats_postgres_vars(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AMP_DATABASE_URL", "postgresql://env@envhost/envdb")
    clean_env.setenv("POSTGRES_HOST", "pghost")
    assert Config().explicit_dsn() == "postgresql://env@envhost/envdb"


def test_any_postgres_var_means_a_server(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("POSTGRES_DB", "only_the_db")
    assert Config().explicit_dsn() == "postgresql://postgres@localhost:5432/only_the_db"


def test_embedded_only_when_nothing_names_a_server(clean_env: pytest.MonkeyPatch) -> None:
    config = Config(max_pool_size=3, poll_interval=2.0)
    assert config.explicit_dsn() is None
    assert config.postgres_host == "localhost"  # the planning's default, unused


# -- behaviour against the database -------------------------------------------------


async def register(sdk: AgentMessaging[Any], *agents: str) -> None:
    await sdk.register_organization("org")
    for agent in agents:
        await sdk.register_agent(agent, "org")


class Note(BaseModel):
    text: str


class NoteSDK(AgentMessaging[Note]):
    """A typed SDK by subclassing (#13.9)."""


async def test_typed_sdk_is_invited_attends_and_speaks(dsn: str) -> None:
    """Protocol messages are not validated as the user's type: an invitation reaches a
    typed SDK's handler as a MeetingInvitation; it attends and speaks Notes."""
    seen: list[Any] = []
    async with NoteSDK(make_config(dsn)) as host, NoteSDK(make_config(dsn)) as guest:
        await register(host, "host", "guest")

        @guest.register_handler("guest")
        async def on_invite(message: Any, context: MessageContext) -> None:
            seen.append((type(message), context.is_meeting_message))
            signal = await guest.meeting.attend_meeting("guest", message.meeting_id, WAIT)
            assert signal.your_turn
            heard = [m.content for m in signal.messages if m.message_type == "meeting"]
            seen.append(heard)
            await guest.meeting.speak("guest", message.meeting_id, Note(text="agreed"), "host")

        meeting = await host.meeting.create_meeting("host", ["host", "guest"], turn_duration=30)
        await host.meeting.start_meeting("host", meeting, Note(text="agenda"), "guest")
        signal = await host.meeting.attend_meeting("host", meeting, WAIT)
        assert signal.your_turn
        assert [m.content for m in signal.messages if m.message_type == "meeting"] == [
            Note(text="agreed")
        ]
        await host.meeting.end_meeting("host", meeting)
        history = await host.meeting.get_meeting_history(meeting)
    assert seen[0] == (MeetingInvitation, True)
    assert seen[1] == [Note(text="agenda")]
    assert [m.content for m in history if m.message_type == "meeting"] == [
        Note(text="agenda"),
        Note(text="agreed"),
    ]
    assert all(isinstance(m.system, SystemMessage) for m in history if m.message_type == "system")


async def test_untyped_sdk_gives_attribute_access(dsn: str) -> None:
    async with AgentMessaging(make_config(dsn)) as sdk:
        await register(sdk, "alice", "bob")
        got: asyncio.Queue[Any] = asyncio.Queue()

        @sdk.register_handler("bob")
        async def bob(message: Any, context: MessageContext) -> None:
            got.put_nowait(message)

        await sdk.one_way.send("alice", "bob", {"text": "hi", "meta": {"priority": "high"}})
        message = await asyncio.wait_for(got.get(), WAIT)
        assert isinstance(message, AttrDict) and message == {
            "text": "hi",
            "meta": {"priority": "high"},
        }
        assert message.text == "hi" and message.meta.priority == "high"


async def test_meeting_status_models_and_aliases(trio: Any) -> None:
    sdk = trio
    meeting = await sdk.meeting.create_meeting("alice", ["alice", "bob"], turn_duration=5)
    await sdk.db.fetch_value("SELECT amp.attend_meeting('bob', $1::text::uuid)", [str(meeting)])
    await sdk.meeting.start_meeting("alice", meeting, {"text": "go"}, "bob")
    status = await sdk.meeting.get_meeting_status(meeting)
    assert status.status is MeetingStatus.ACTIVE and status.state == "active"
    assert status.current_speaker == "bob" == status.current_speaker_external_id
    assert status.turn_started_at is not None and status.turn_deadline is not None
    assert (status.turn_deadline - status.turn_started_at).total_seconds() == 5
    locked = {p.agent_external_id: (p.status, p.is_locked) for p in status.participants}
    assert locked == {"alice": ("waiting", True), "bob": ("speaking", False)}
    assert status.participant_ids == ["alice", "bob"]
    row = await sdk.meeting.get_meeting(meeting)
    assert isinstance(row, Meeting) and row.status == "active" and row.turn_duration == 5
    history = await sdk.meeting.get_meeting_history(meeting)
    opening = next(m for m in history if m.message_type == "meeting")
    assert opening.sender == "alice" and opening.id == opening.message_id
    assert (await sdk.get_message(opening.id)).content == {"text": "go"}


async def test_session_and_message_lookups(trio: Any) -> None:
    sdk = trio
    with pytest.raises(SessionNotFoundError):
        await sdk.get_session("alice", "bob")
    message_id = await sdk.async_conversation.send("alice", "bob", {"q": 1})
    session = await sdk.get_session("bob", "alice", "async")
    assert isinstance(session, Session) and session.session_type is SessionType.ASYNC
    assert session.status is SessionStatus.ACTIVE
    message = await sdk.get_message(message_id)
    assert isinstance(message, Message) and message.sender == "alice"
    assert message.session_id == session.id and message.content == {"q": 1}
    with pytest.raises(InvalidInputError):
        await sdk.get_message(UUID(int=7))


async def test_turn_duration_none_means_no_timeout(trio: Any) -> None:
    sdk = trio
    none = await sdk.meeting.create_meeting("alice", ["alice", "bob"], turn_duration=None)
    default = await sdk.meeting.create_meeting("alice", ["alice", "bob"])
    assert (await sdk.meeting.get_meeting_status(none)).turn_duration is None
    assert (await sdk.meeting.get_meeting_status(default)).turn_duration == 60.0


async def test_enable_turn_timeout_false(dsn: str) -> None:
    config = make_config(dsn, enable_turn_timeout=False)
    async with AgentMessaging[Any](config) as sdk:
        await register(sdk, "alice", "bob")
        meeting = await sdk.meeting.create_meeting("alice", ["alice", "bob"])
        assert (await sdk.meeting.get_meeting_status(meeting)).turn_duration is None
        explicit = await sdk.meeting.create_meeting("alice", ["alice", "bob"], turn_duration=9)
        assert (await sdk.meeting.get_meeting_status(explicit)).turn_duration == 9
        assert sdk._sweeper is None  # this process never expires turns


async def test_four_argument_event_handlers(trio: Any) -> None:
    sdk = trio
    seen: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    @sdk.register_event_handler(MeetingEvent.MEETING_STARTED)
    async def four(
        event_type: MeetingEvent, meeting_id: UUID, agent: str | None, data: Any
    ) -> None:
        seen.put_nowait((event_type, meeting_id, agent))

    @sdk.register_event_handler(MeetingEvent.MEETING_STARTED)
    async def three(meeting_id: UUID, agent: str | None, data: Any) -> None:
        seen.put_nowait((meeting_id, agent))

    meeting = await sdk.meeting.create_meeting("alice", ["alice", "bob"])
    await sdk.db.fetch_value("SELECT amp.attend_meeting('bob', $1::text::uuid)", [str(meeting)])
    await sdk.meeting.start_meeting("alice", meeting, {"text": "go"})
    got = {await asyncio.wait_for(seen.get(), WAIT) for _ in range(2)}
    assert got == {(MeetingEvent.MEETING_STARTED, meeting, "alice"), (meeting, "alice")}


async def test_start_meeting_waits_for_attendance_then_gives_up(dsn: str) -> None:
    async with AgentMessaging[Any](make_config(dsn, start_meeting_wait=1.0)) as sdk:
        await register(sdk, "alice", "bob")
        meeting = await sdk.meeting.create_meeting("alice", ["alice", "bob"])
        with pytest.raises(InvalidMeetingStateError, match="not every invitee attended"):
            await sdk.meeting.start_meeting("alice", meeting, {"text": "anyone?"})
        starting = asyncio.create_task(sdk.meeting.start_meeting("alice", meeting, {"text": "go"}))
        await sdk.db.fetch_value("SELECT amp.attend_meeting('bob', $1::text::uuid)", [str(meeting)])
        await asyncio.wait_for(starting, WAIT)
        assert (await sdk.meeting.get_meeting_status(meeting)).status == "active"


async def test_exceptions_the_planning_names_per_call(trio: Any) -> None:
    sdk = trio
    with pytest.raises(AgentNotFoundError):
        await sdk.async_conversation.resume_agent_handler("nobody")
    with pytest.raises(HandlerNotRegisteredError):
        await sdk.async_conversation.resume_agent_handler("bob")
    for agents in (["alice", "bob", "bob"], [], ["alice"]):
        with pytest.raises(InvalidMeetingError):
            await sdk.meeting.create_meeting("alice", agents)
    with pytest.raises(InvalidMeetingError):
        await sdk.meeting.create_meeting("alice", ["alice", "bob"], turn_duration=0)
    with pytest.raises(AgentNotFoundError):
        await sdk.meeting.create_meeting("alice", ["alice", "nobody"])
    with pytest.raises(AgentNotFoundError):
        await sdk.one_way.send("alice", "nobody", {"x": 1})
    with pytest.raises(AgentNotFoundError):
        await sdk.async_conversation.get_unread_messages("nobody")
    with pytest.raises(SessionNotFoundError):
        await sdk.sync_conversation.end_conversation("alice", "carol")
    meeting = await sdk.meeting.create_meeting("alice", ["alice", "bob"], turn_duration=None)
    await sdk.db.fetch_value("SELECT amp.attend_meeting('bob', $1::text::uuid)", [str(meeting)])
    await sdk.meeting.start_meeting("alice", meeting, {"text": "go"}, "bob")
    with pytest.raises(SpeakingTimeoutError):
        await sdk.meeting.speak("bob", meeting, {"text": "over to you"}, "alice", timeout=0.2)
    with pytest.raises(MeetingTimeoutError):
        await sdk.meeting.attend_meeting("bob", meeting, timeout=0.2)
