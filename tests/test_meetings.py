"""Meetings: the turn-taking state machine, against a real PostgreSQL.

No sleeps for synchronisation: tests wait on turn signals, event handlers, subprocess
output and notifications, each with a timeout. Deadlines are moved with SQL where a
test needs an expired turn deterministically.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from agent_messaging import (
    AgentMessaging,
    AgentNotFoundError,
    AgentNotInMeetingError,
    HostCannotLeaveError,
    InvalidInputError,
    InvalidMeetingStateError,
    MeetingEvent,
    MeetingNotFoundError,
    MeetingTimeoutError,
    NotCurrentSpeakerError,
    NotMeetingHostError,
)
from agent_messaging.models import MeetingMessage, MessageContext

from .helpers import make_config, psql

SDK = AgentMessaging[dict[str, object]]
Conn = psycopg.Connection[tuple[object, ...]]
PARTICIPANT = Path(__file__).parent / "agents" / "meeting_participant.py"
WAIT = 30.0


async def register(sdk: SDK, *names: str) -> None:
    if await sdk.db.fetch_value("SELECT count(*) AS n FROM amp.organizations") == 0:
        await sdk.register_organization("org", "Org")
    await sdk.db.execute(
        "SELECT amp.register_agent(x, 'org') FROM unnest($1::text[]) x", [list(names)]
    )


async def attend_sql(sdk: SDK, meeting: UUID, *names: str) -> None:
    """Attend without waiting for the turn (the SQL call alone)."""
    for name in names:
        await sdk.db.fetch_value(
            "SELECT amp.attend_meeting($1, $2::text::uuid) AS s", [name, str(meeting)]
        )


async def speak_sql(sdk: SDK, agent: str, meeting: UUID, text: str, nxt: str | None = None) -> str:
    """amp.speak alone: stores and passes the turn, without waiting for the next one."""
    return str(
        await sdk.db.fetch_value(
            "SELECT amp.speak($1, $2::text::uuid, $3::text::jsonb, $4::text) AS id",
            [agent, str(meeting), json.dumps({"text": text}), nxt],
        )
    )


async def ready_meeting(sdk: SDK, names: list[str], turn: float | None = 60.0) -> UUID:
    """Register ``names``, create a meeting hosted by the first, attend everyone."""
    await register(sdk, *names)
    meeting = await sdk.meeting.create_meeting(names[0], names, turn_duration=turn)
    await attend_sql(sdk, meeting, *names[1:])
    return meeting


def spoken(history: list[MeetingMessage[Any]]) -> list[tuple[str | None, bool]]:
    return [(m.sender_external_id, m.is_late) for m in history if m.message_type == "meeting"]


def system_events(history: list[MeetingMessage[Any]]) -> list[tuple[str, str]]:
    return [
        (m.system["event"], m.system["agent_external_id"]) for m in history if m.system is not None
    ]


async def current_speaker(sdk: SDK, meeting: UUID) -> str | None:
    return (await sdk.meeting.get_meeting_status(meeting)).current_speaker_external_id


# -- the basic flow, in one process ---------------------------------------------


async def test_full_meeting_in_process(sdk: SDK) -> None:
    names = ["host", "a", "b"]
    await register(sdk, *names)
    meeting = await sdk.meeting.create_meeting("host", names, turn_duration=60)
    status = await sdk.meeting.get_meeting_status(meeting)
    assert status.status == "created" and status.participant_count == 3
    assert [p.agent_external_id for p in status.participants] == names
    invitations = await sdk.db.fetch_value(
        "SELECT count(*) AS n FROM amp.messages WHERE meeting_id = $1::text::uuid "
        "AND message_type = 'meeting_invitation' AND delivery_status = 'pending'",
        [str(meeting)],
    )
    assert invitations == 3  # every listed agent, the host too (the planning's create_meeting)

    a_turn = asyncio.create_task(sdk.meeting.attend_meeting("a", meeting, timeout=WAIT))
    b_turn = asyncio.create_task(sdk.meeting.attend_meeting("b", meeting, timeout=WAIT))
    ready = await sdk.meeting.wait_until_ready(meeting, timeout=WAIT)
    assert ready.status == "ready"
    await sdk.meeting.start_meeting("host", meeting, {"text": "agenda"}, "b")
    host_turn = asyncio.create_task(sdk.meeting.attend_meeting("host", meeting, timeout=WAIT))

    signal_b = await b_turn
    assert signal_b.your_turn and not signal_b.meeting_ended
    assert [m.content for m in signal_b.messages if m.message_type == "meeting"] == [
        {"text": "agenda"}
    ]
    a_next = asyncio.create_task(sdk.meeting.speak("b", meeting, {"text": "b1"}, "a", timeout=WAIT))
    signal_a = await a_turn
    assert signal_a.your_turn and signal_a.current_speaker_external_id == "a"
    # round-robin after a: b
    b_again = asyncio.create_task(sdk.meeting.speak("a", meeting, {"text": "a1"}, timeout=WAIT))
    signal_b2 = await a_next
    assert signal_b2.your_turn
    assert [m.content for m in signal_b2.messages] == [{"text": "a1"}]
    # round-robin after b wraps to the host
    last = asyncio.create_task(sdk.meeting.speak("b", meeting, {"text": "b2"}, timeout=WAIT))
    signal_host = await host_turn
    assert signal_host.your_turn
    assert [m.content for m in signal_host.messages] == [
        {"text": "b1"},
        {"text": "a1"},
        {"text": "b2"},
    ]
    await sdk.meeting.end_meeting("host", meeting)
    for task in (b_again, last):
        ended = await task
        assert ended.meeting_ended and not ended.your_turn
    history = await sdk.meeting.get_meeting_history(meeting)
    assert spoken(history) == [
        ("host", False),
        ("b", False),
        ("a", False),
        ("b", False),
    ]
    assert [m.seq for m in history] == sorted(m.seq for m in history)
    joins = system_events(history)[:3]  # a and b attended concurrently
    assert joins[0] == ("agent_joined", "host")
    assert sorted(joins[1:]) == [("agent_joined", "a"), ("agent_joined", "b")]
    assert system_events(history)[-1] == ("meeting_ended", "host")
    final = await sdk.meeting.get_meeting_status(meeting)
    assert final.status == "ended" and final.current_speaker_external_id is None
    # attend on an ended meeting returns the end at once
    assert (await sdk.meeting.attend_meeting("a", meeting, timeout=WAIT)).meeting_ended


async def test_wait_times_out(sdk: SDK) -> None:
    meeting = await ready_meeting(sdk, ["host", "a", "b"])
    await sdk.meeting.start_meeting("host", meeting, {"text": "go"}, "a")
    with pytest.raises(MeetingTimeoutError):
        await sdk.meeting.attend_meeting("b", meeting, timeout=0.3)


# -- leave, host rules, late speak ---------------------------------------------------


async def test_leave_host_rules_and_events(sdk: SDK) -> None:
    seen: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
    for event in MeetingEvent:

        def make(kind: str) -> Any:
            async def handler(meeting_id: UUID, agent: str | None, data: dict[str, Any]) -> None:
                seen.put_nowait((kind, agent))

            return handler

        sdk.register_event_handler(event)(make(event.value))

    meeting = await ready_meeting(sdk, ["host", "a", "b", "c"])
    with pytest.raises(NotMeetingHostError):
        await sdk.meeting.start_meeting("a", meeting, {"text": "mine"})
    with pytest.raises(NotMeetingHostError):
        await sdk.meeting.end_meeting("a", meeting)
    await sdk.meeting.start_meeting("host", meeting, {"text": "go"}, "b")
    a_waits = asyncio.create_task(sdk.meeting.attend_meeting("a", meeting, timeout=WAIT))

    await sdk.meeting.leave_meeting("b", meeting)  # b held the turn
    assert await current_speaker(sdk, meeting) == "c"
    with pytest.raises(HostCannotLeaveError):
        await sdk.meeting.leave_meeting("host", meeting)
    with pytest.raises(AgentNotInMeetingError):
        await speak_sql(sdk, "c", meeting, "to b", "b")  # b has left
    with pytest.raises(AgentNotInMeetingError):
        await speak_sql(sdk, "b", meeting, "still here?")
    with pytest.raises(NotCurrentSpeakerError):
        await speak_sql(sdk, "a", meeting, "me first")
    await speak_sql(sdk, "c", meeting, "c1")  # round-robin wraps to host
    await speak_sql(sdk, "host", meeting, "h1")  # -> a
    signal_a = await a_waits
    assert signal_a.your_turn
    await speak_sql(sdk, "a", meeting, "a1")  # skips b -> c
    assert await current_speaker(sdk, meeting) == "c"
    status = await sdk.meeting.get_meeting_status(meeting)
    assert status.participant_count == 3
    assert {p.agent_external_id: p.status for p in status.participants}["b"] == "left"
    with pytest.raises(NotMeetingHostError):
        await sdk.meeting.end_meeting("c", meeting)
    await sdk.meeting.end_meeting("host", meeting)
    with pytest.raises(InvalidMeetingStateError):
        await speak_sql(sdk, "c", meeting, "too late")
    with pytest.raises(InvalidMeetingStateError):
        await sdk.meeting.end_meeting("host", meeting)

    history = await sdk.meeting.get_meeting_history(meeting)
    assert ("agent_left", "b") in system_events(history)
    got: list[tuple[str, str | None]] = []
    while ("meeting_ended", "host") not in got:
        got.append(await asyncio.wait_for(seen.get(), WAIT))
    kinds = {kind for kind, _ in got}
    assert kinds == {e.value for e in MeetingEvent} - {"agent_timed_out"}
    assert ("agent_left", "b") in got


async def test_late_speak_after_expiry(sdk: SDK, sql: Conn) -> None:
    meeting = await ready_meeting(sdk, ["host", "a", "b"], turn=60)
    await sdk.meeting.start_meeting("host", meeting, {"text": "go"}, "a")
    sql.execute(
        "UPDATE amp.meetings SET turn_deadline = now() - interval '1 second' WHERE id = %s",
        (meeting,),
    )
    assert await sdk.meeting.expire_turns() == 1
    assert await sdk.meeting.expire_turns() == 0  # idempotent
    assert await current_speaker(sdk, meeting) == "b"

    await speak_sql(sdk, "a", meeting, "sorry, late")
    assert await current_speaker(sdk, meeting) == "b"  # the turn is not taken back
    with pytest.raises(NotCurrentSpeakerError):
        await speak_sql(sdk, "a", meeting, "and again")  # one late message per lost turn
    with pytest.raises(NotCurrentSpeakerError):
        await speak_sql(sdk, "host", meeting, "me?")
    await speak_sql(sdk, "b", meeting, "b1")
    history = await sdk.meeting.get_meeting_history(meeting)
    assert spoken(history) == [("host", False), ("a", True), ("b", False)]
    assert ("agent_timed_out", "a") in system_events(history)
    timeout_seq = next(
        m.seq for m in history if m.system and m.system["event"] == "agent_timed_out"
    )
    late_seq = next(m.seq for m in history if m.is_late)
    assert timeout_seq < late_seq
    # the late speaker's turn signal still has what it missed (its last_spoke_seq is
    # that of its last on-turn message)
    status = await sdk.meeting.get_meeting_status(meeting)
    assert {p.agent_external_id: p.last_spoke_seq for p in status.participants}["a"] == 0


# -- turn timeouts ------------------------------------------------------------------


async def test_silent_participant_times_out(sdk: SDK) -> None:
    timed_out: asyncio.Queue[tuple[UUID, str | None, dict[str, Any]]] = asyncio.Queue()

    @sdk.register_event_handler(MeetingEvent.AGENT_TIMED_OUT)
    async def on_timeout(meeting_id: UUID, agent: str | None, data: dict[str, Any]) -> None:
        timed_out.put_nowait((meeting_id, agent, data))

    @sdk.register_event_handler(MeetingEvent.AGENT_JOINED)
    async def broken(meeting_id: UUID, agent: str | None, data: dict[str, Any]) -> None:
        raise RuntimeError("handler bug: logged, does not stop the relay")

    await register(sdk, "host", "a", "b")
    meeting = await sdk.meeting.create_meeting("host", ["host", "a", "b"], turn_duration=0.5)
    a_turn = asyncio.create_task(sdk.meeting.attend_meeting("a", meeting, timeout=WAIT))
    b_turn = asyncio.create_task(sdk.meeting.attend_meeting("b", meeting, timeout=WAIT))
    await sdk.meeting.wait_until_ready(meeting, timeout=WAIT)
    await sdk.meeting.start_meeting("host", meeting, {"text": "go"}, "a")
    assert (await a_turn).your_turn  # ... and a says nothing
    signal_b = await b_turn  # b's waiter expires a's turn when the deadline passes
    assert signal_b.your_turn
    assert [m.system["event"] for m in signal_b.messages if m.system][-1] == "agent_timed_out"
    meeting_id, agent, data = await asyncio.wait_for(timed_out.get(), WAIT)
    assert (meeting_id, agent, data["next_speaker_external_id"]) == (meeting, "a", "b")
    await sdk.meeting.end_meeting("host", meeting)
    history = await sdk.meeting.get_meeting_history(meeting)
    assert system_events(history)[3] == ("agent_timed_out", "a")


class Participant:
    """A meeting participant running tests/agents/meeting_participant.py."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc

    @classmethod
    async def spawn(
        cls, dsn: str, name: str, meeting: UUID, plan: list[dict[str, Any]]
    ) -> Participant:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PARTICIPANT),
            dsn,
            name,
            str(meeting),
            json.dumps(plan),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return cls(name, proc)

    async def expect(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not line:
                raise AssertionError(f"{self.name} exited before {event!r}")
            record: dict[str, Any] = json.loads(line)
            if record["event"] == event:
                return record

    async def finish(self) -> int:
        return await asyncio.wait_for(self.proc.wait(), 60)


@pytest.fixture
async def processes() -> AsyncIterator[list[Participant]]:
    started: list[Participant] = []
    yield started
    for participant in started:
        if participant.proc.returncode is None:
            participant.proc.kill()
            await participant.proc.wait()


async def test_timed_out_process_was_killed(
    sdk: SDK, dsn: str, processes: list[Participant]
) -> None:
    timed_out: asyncio.Queue[str | None] = asyncio.Queue()

    @sdk.register_event_handler(MeetingEvent.AGENT_TIMED_OUT)
    async def on_timeout(meeting_id: UUID, agent: str | None, data: dict[str, Any]) -> None:
        timed_out.put_nowait(agent)

    await register(sdk, "host", "a", "b")
    meeting = await sdk.meeting.create_meeting("host", ["host", "a", "b"], turn_duration=0.5)
    a = await Participant.spawn(dsn, "a", meeting, [{"op": "hang"}])
    processes.append(a)
    b_turn = asyncio.create_task(sdk.meeting.attend_meeting("b", meeting, timeout=WAIT))
    await sdk.meeting.wait_until_ready(meeting, timeout=WAIT)
    await sdk.meeting.start_meeting("host", meeting, {"text": "go"}, "a")
    await a.expect("hanging")  # a holds the turn ...
    a.proc.send_signal(signal.SIGKILL)  # ... and dies with it
    assert await a.finish() == -signal.SIGKILL
    assert (await b_turn).your_turn
    assert await asyncio.wait_for(timed_out.get(), WAIT) == "a"
    history = await sdk.meeting.get_meeting_history(meeting)
    assert ("agent_timed_out", "a") in system_events(history)


async def test_sweep_expires_turns_without_waiters(dsn: str) -> None:
    """Nobody waits in the meeting: the periodic sweep of an SDK still moves the turn."""
    async with AgentMessaging[dict[str, object]](make_config(dsn, poll_interval=0.2)) as sdk:
        meeting = await ready_meeting(sdk, ["host", "a", "b"], turn=0.2)
        done = asyncio.Event()

        @sdk.register_event_handler(MeetingEvent.AGENT_TIMED_OUT)
        async def on_timeout(meeting_id: UUID, agent: str | None, data: dict[str, Any]) -> None:
            done.set()

        await sdk.events_ready()
        await sdk.meeting.start_meeting("host", meeting, {"text": "go"}, "a")
        await asyncio.wait_for(done.wait(), WAIT)
        history = await sdk.meeting.get_meeting_history(meeting)
        assert system_events(history)[3] == ("agent_timed_out", "a")


# -- several OS processes -----------------------------------------------------------


async def test_three_agents_in_three_processes(
    sdk: SDK, dsn: str, processes: list[Participant]
) -> None:
    await register(sdk, "host", "a", "b")
    meeting = await sdk.meeting.create_meeting("host", ["host", "a", "b"], turn_duration=30)
    plans: dict[str, list[dict[str, Any]]] = {
        "host": [{"op": "start", "next": "b"}, {"op": "speak"}, {"op": "end"}],
        "b": [{"op": "speak", "next": "a"}, {"op": "speak"}, {"op": "speak"}],
        "a": [{"op": "speak"}, {"op": "speak"}],
    }
    for name, plan in plans.items():
        processes.append(await Participant.spawn(dsn, name, meeting, plan))
    results = [await p.expect("done") for p in processes]
    assert [await p.finish() for p in processes] == [0, 0, 0]
    histories = [r["history"] for r in results]
    assert histories[0] == histories[1] == histories[2]
    said = [
        (m["sender_external_id"], m["content"]["text"])
        for m in histories[0]
        if m["message_type"] == "meeting"
    ]
    assert said == [
        ("host", "host opens"),
        ("b", "b #1"),  # explicit: b -> a
        ("a", "a #1"),  # round-robin from here
        ("b", "b #2"),
        ("host", "host #1"),
        ("a", "a #2"),
        ("b", "b #3"),
    ]
    assert histories[0][-1]["system"]["event"] == "meeting_ended"


async def test_participant_in_plain_sql(sdk: SDK, dsn: str) -> None:
    await register(sdk, "host", "a", "p")
    meeting = await sdk.meeting.create_meeting("host", ["host", "a", "p"], turn_duration=60)
    a_turn = asyncio.create_task(sdk.meeting.attend_meeting("a", meeting, timeout=WAIT))
    psql(dsn, f"SELECT amp.attend_meeting('p', '{meeting}');")
    await sdk.meeting.wait_until_ready(meeting, timeout=WAIT)
    await sdk.meeting.start_meeting("host", meeting, {"text": "welcome"}, "p")
    host_turn = asyncio.create_task(sdk.meeting.attend_meeting("host", meeting, timeout=WAIT))
    out = psql(
        dsn,
        f"SELECT your_turn FROM amp.meeting_turn('p', '{meeting}');\n"
        f"SELECT amp.speak('p', '{meeting}', '{{\"text\": \"hello from psql\"}}', 'a') "
        "IS NOT NULL;",
    )
    assert out.stdout.split() == ["t", "t"]
    signal_a = await a_turn
    assert signal_a.your_turn
    assert {"text": "hello from psql"} in [m.content for m in signal_a.messages]
    a_waits = asyncio.create_task(sdk.meeting.speak("a", meeting, {"text": "a1"}, timeout=WAIT))
    # round-robin after a is p: wait for p's turn on its behalf, then p speaks in SQL
    assert (await sdk.meeting.wait_for_turn("p", meeting, timeout=WAIT)).your_turn
    psql(dsn, f"""SELECT amp.speak('p', '{meeting}', '{{"text": "p2"}}');""")  # -> host
    assert (await host_turn).your_turn
    await sdk.meeting.end_meeting("host", meeting)
    assert (await a_waits).meeting_ended
    rows = psql(
        dsn,
        f"SELECT sender_external_id FROM amp.meeting_history('{meeting}') "
        "WHERE message_type = 'meeting' ORDER BY seq;",
    )
    assert rows.stdout.split() == ["host", "p", "a", "p"]


# -- races --------------------------------------------------------------------------


async def test_concurrent_speaks_for_one_turn(sdk: SDK) -> None:
    await register(sdk, "host", "a", "b")
    for _ in range(10):
        meeting = await sdk.meeting.create_meeting("host", ["host", "a", "b"], turn_duration=60)
        await attend_sql(sdk, meeting, "a", "b")
        await sdk.meeting.start_meeting("host", meeting, {"text": "go"}, "a")
        results = await asyncio.gather(
            speak_sql(sdk, "a", meeting, "one"),
            speak_sql(sdk, "a", meeting, "two"),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["NotCurrentSpeakerError", "str"]
        history = await sdk.meeting.get_meeting_history(meeting)
        assert spoken(history) == [("host", False), ("a", False)]
        assert await current_speaker(sdk, meeting) == "b"


async def test_speak_racing_expiry(dsn: str) -> None:
    # this process's turn sweeper would expire the 1-50 ms turns on its own, on time,
    # before the race below: only the racing calls may expire here
    async with SDK(make_config(dsn, enable_turn_timeout=False)) as sdk:
        await _speak_racing_expiry(sdk)


async def _speak_racing_expiry(sdk: SDK) -> None:
    await register(sdk, "host", "a", "b")
    outcomes = set()
    for i in range(20):
        turn = [0.001, 0.01, 0.03, 0.05][i % 4]
        meeting = await sdk.meeting.create_meeting("host", ["host", "a", "b"], turn_duration=turn)
        await attend_sql(sdk, meeting, "a", "b")
        await sdk.meeting.start_meeting("host", meeting, {"text": "go"}, "a")
        await asyncio.gather(
            speak_sql(sdk, "a", meeting, "racing"),
            sdk.meeting.expire_turns(),
            sdk.meeting.expire_turns(),
        )
        speaking = await sdk.db.fetch(
            "SELECT a.external_id FROM amp.meeting_participants p "
            "JOIN amp.agents a ON a.id = p.agent_id "
            "WHERE p.meeting_id = $1::text::uuid AND p.status = 'speaking'",
            [str(meeting)],
        )
        status = await sdk.meeting.get_meeting_status(meeting)
        assert [r["external_id"] for r in speaking] == [status.current_speaker_external_id]
        history = await sdk.meeting.get_meeting_history(meeting)
        seqs = [m.seq for m in history]
        assert seqs == sorted(set(seqs))
        a_said = [m for m in history if m.sender_external_id == "a"]
        assert len(a_said) == 1
        timeouts = [m for m in history if m.system and m.system["event"] == "agent_timed_out"]
        a_timeouts = [m for m in timeouts if m.system and m.system["agent_external_id"] == "a"]
        if a_said[0].is_late:
            # expiry won: exactly one timeout of a, before a's message
            assert len(a_timeouts) == 1 and a_timeouts[0].seq < a_said[0].seq
            outcomes.add("late")
        else:
            # speak won: a was not timed out
            assert a_timeouts == []
            outcomes.add("on time")
    assert outcomes  # both happen, depending on timing; either is consistent


# -- scale --------------------------------------------------------------------------


async def run_participant(sdk: SDK, meeting: UUID, name: str, host: bool, rounds: int) -> int:
    """Speak on every turn (round-robin); the host ends after ``rounds`` rounds."""
    said = 0
    signal = await sdk.meeting.attend_meeting(name, meeting, timeout=120)
    while not signal.meeting_ended:
        assert signal.your_turn
        if host and said == rounds - 1:
            await sdk.meeting.end_meeting(name, meeting)
            break
        said += 1
        signal = await sdk.meeting.speak(name, meeting, {"n": said}, timeout=120)
    return said


async def test_fifty_participants_several_rounds(dsn: str) -> None:
    rounds = 3
    names = [f"p{i:02d}" for i in range(50)]
    async with AgentMessaging[dict[str, object]](make_config(dsn, max_pool_size=20)) as sdk:
        meeting = await ready_meeting(sdk, names, turn=60)
        tasks = [
            asyncio.create_task(run_participant(sdk, meeting, n, n == "p00", rounds)) for n in names
        ]
        await sdk.meeting.start_meeting("p00", meeting, {"n": 0})
        counts = await asyncio.wait_for(asyncio.gather(*tasks), 120)
        assert counts == [rounds - 1] + [rounds] * 49
        history = await sdk.meeting.get_meeting_history(meeting)
        assert [s for s, _ in spoken(history)] == names * rounds


async def test_hundred_concurrent_meetings(dsn: str) -> None:
    rounds = 2
    async with AgentMessaging[dict[str, object]](make_config(dsn, max_pool_size=20)) as sdk:
        groups = [[f"m{i:03d}_{j}" for j in range(5)] for i in range(100)]
        await register(sdk, *[n for g in groups for n in g])
        meetings = await asyncio.gather(
            *(sdk.meeting.create_meeting(g[0], g, turn_duration=60) for g in groups)
        )
        for meeting, group in zip(meetings, groups, strict=True):
            await attend_sql(sdk, meeting, *group[1:])
        tasks = [
            asyncio.create_task(run_participant(sdk, m, n, n == g[0], rounds))
            for m, g in zip(meetings, groups, strict=True)
            for n in g
        ]
        await asyncio.gather(
            *(
                sdk.meeting.start_meeting(g[0], m, {"n": 0})
                for m, g in zip(meetings, groups, strict=True)
            )
        )
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        for meeting, group in zip(meetings, groups, strict=True):
            history = await sdk.meeting.get_meeting_history(meeting)
            assert [s for s, _ in spoken(history)] == group * rounds
            assert history[-1].system is not None
            assert history[-1].system["event"] == "meeting_ended"


# -- bad input ----------------------------------------------------------------------


async def test_bad_input_is_refused_and_stores_nothing(sdk: SDK) -> None:
    await register(sdk, "host", "a", "b", "stranger")
    cases: list[tuple[type[Exception], list[str], str]] = [
        (AgentNotFoundError, ["host", "nobody"], "host"),
        (AgentNotFoundError, ["a"], "nobody"),
        (InvalidInputError, [], "host"),
        (InvalidInputError, ["a", "a"], "host"),
        (InvalidInputError, ["host"], "host"),
        (InvalidInputError, ["a", ""], "host"),
        (InvalidInputError, ["a"], ""),
    ]
    for error, agents, host in cases:
        with pytest.raises(error):
            await sdk.meeting.create_meeting(host, agents)
    with pytest.raises(InvalidInputError):
        await sdk.meeting.create_meeting("host", ["a"], turn_duration=-1)
    assert await sdk.db.fetch_value("SELECT count(*) AS n FROM amp.meetings") == 0
    assert await sdk.db.fetch_value("SELECT count(*) AS n FROM amp.messages") == 0

    unknown = uuid4()
    with pytest.raises(MeetingNotFoundError):
        await sdk.meeting.get_meeting_status(unknown)
    with pytest.raises(MeetingNotFoundError):
        await sdk.meeting.get_meeting_history(unknown)
    with pytest.raises(MeetingNotFoundError):
        await sdk.meeting.attend_meeting("a", unknown)
    with pytest.raises(InvalidInputError):
        await sdk.meeting.get_meeting_status("not-a-uuid")  # type: ignore[arg-type]

    meeting = await sdk.meeting.create_meeting("host", ["host", "a", "b"])
    sdk.config.start_meeting_wait = 0.5  # start_meeting waits (bounded) for attendance
    with pytest.raises(InvalidMeetingStateError):  # not every invitee attended
        await sdk.meeting.start_meeting("host", meeting, {"text": "go"})
    await attend_sql(sdk, meeting, "a", "b")
    with pytest.raises(InvalidMeetingStateError):
        await speak_sql(sdk, "host", meeting, "not started")
    with pytest.raises(AgentNotFoundError):
        await sdk.meeting.start_meeting("host", meeting, {"text": "go"}, "nobody")
    await sdk.meeting.start_meeting("host", meeting, {"text": "go"}, "a")
    before = await sdk.db.fetch_value("SELECT count(*) AS n FROM amp.messages")
    with pytest.raises(InvalidInputError):  # refused by the SDK
        await sdk.meeting.speak("a", meeting, {"x": "y" * 1_100_000})
    with pytest.raises(InvalidInputError):  # refused by SQL (amp._check_message)
        await speak_sql(sdk, "a", meeting, "y" * 1_100_000)
    with pytest.raises(InvalidInputError):
        await sdk.meeting.speak("a", meeting, {"x": object()})
    with pytest.raises(AgentNotFoundError):
        await speak_sql(sdk, "a", meeting, "to nobody", "nobody")
    with pytest.raises(AgentNotInMeetingError):
        await speak_sql(sdk, "a", meeting, "to a stranger", "stranger")
    with pytest.raises(AgentNotInMeetingError):
        await speak_sql(sdk, "stranger", meeting, "let me in")
    assert await sdk.db.fetch_value("SELECT count(*) AS n FROM amp.messages") == before
    assert await current_speaker(sdk, meeting) == "a"


# -- invitations reach handlers (push delivery) -----------------------------------


async def test_invitation_reaches_invitee_handler(sdk: SDK) -> None:
    await register(sdk, "host", "a", "b")
    invited: asyncio.Queue[tuple[dict[str, object], MessageContext]] = asyncio.Queue()

    @sdk.register_handler("a")
    async def on_message(message: dict[str, object], context: MessageContext) -> None:
        invited.put_nowait((message, context))
        # an invitee typically attends from its handler (without waiting for the turn)
        await attend_sql(sdk, context.meeting_id, "a")  # type: ignore[arg-type]

    await sdk.serve_handlers()
    meeting = await sdk.meeting.create_meeting("host", ["host", "a", "b"])
    message, context = await asyncio.wait_for(invited.get(), WAIT)
    assert context.is_meeting_message and context.meeting_id == meeting
    assert context.message_type == "meeting_invitation"
    assert context.sender_external_id == "host"
    assert message["meeting_id"] == str(meeting)
    # the invitation names the meeting; the participants are read from it
    assert message["participant_count"] == 3 and "participants" not in message
    status = await sdk.meeting.get_meeting_status(message["meeting_id"])
    assert [p.agent_external_id for p in status.participants] == ["host", "a", "b"]
    await attend_sql(sdk, meeting, "b")
    assert (await sdk.meeting.wait_until_ready(meeting, timeout=WAIT)).status == "ready"


async def test_an_ended_meeting_is_no_longer_listened_to(trio: Any) -> None:
    sdk = trio
    meeting = await sdk.meeting.create_meeting("alice", ["alice", "bob"], turn_duration=None)
    attending = asyncio.create_task(sdk.meeting.attend_meeting("bob", meeting, timeout=30))
    await sdk.meeting.wait_until_ready(meeting, timeout=30)
    await sdk.meeting.end_meeting("alice", meeting)
    assert (await asyncio.wait_for(attending, 30)).meeting_ended
    # (on the host's shared LISTEN connection by default: the hub UNLISTENs a channel
    # that none of its subscribers uses any more)
    channels = await sdk.dispatcher.listening_channels()
    assert channels is not None and f"amp_meeting_{meeting.hex}" not in channels
