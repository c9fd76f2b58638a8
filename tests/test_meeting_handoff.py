"""The meeting turn hand-off: the turn's hint to its new speaker, on that agent's own
channel, carries what was said since it last spoke, so the woken speaker returns
without reading it back; a hint it cannot prove newer than its wait only wakes it.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from uuid import UUID

import psycopg

from agent_messaging import AgentMessaging, queries
from agent_messaging.meeting_manager import _Turn
from agent_messaging.notifications import MeetingChanged, TurnGiven, parse

SDK = AgentMessaging[dict[str, object]]
Conn = psycopg.Connection[tuple[object, ...]]
WAIT = 30.0


def setup_meeting(conn: Conn, names: list[str], turn: str | None = "60 seconds") -> UUID:
    """Agents ``names`` (the first hosts), all attending, not started."""
    conn.execute("SELECT amp.register_organization('org', 'Org')")
    for name in names:
        conn.execute("SELECT amp.register_agent(%s, 'org')", (name,))
    row = conn.execute(
        "SELECT amp.create_meeting(%s, %s, %s::interval)", (names[0], names, turn)
    ).fetchone()
    assert row is not None
    meeting = UUID(str(row[0]))
    for name in names[1:]:
        conn.execute("SELECT amp.attend_meeting(%s, %s)", (name, meeting))
    return meeting


def listen(conn: Conn, *names: str) -> dict[str, str]:
    """LISTEN on the agents' channels; agent -> channel."""
    channels = {}
    for name in names:
        row = conn.execute("SELECT amp.agent_channel(%s)", (name,)).fetchone()
        assert row is not None
        channels[name] = str(row[0])
    conn.execute("SELECT amp.listen(%s)", (list(channels.values()),))
    return channels


def heard(conn: Conn) -> list[tuple[str, dict[str, Any]]]:
    return [(n.channel, json.loads(n.payload)) for n in conn.notifies(timeout=0.3)]


def speak(conn: Conn, agent: str, meeting: UUID, text: str, nxt: str | None = None) -> None:
    conn.execute(
        "SELECT amp.speak(%s, %s, %s::jsonb, %s)", (agent, meeting, json.dumps({"t": text}), nxt)
    )


def said(hint: dict[str, Any]) -> list[tuple[str | None, Any]]:
    return [
        (m["sender_external_id"], json.loads(m["content"]).get("t", m["message_type"]))
        for m in hint["messages"]
    ]


def turns(notes: list[tuple[str, dict[str, Any]]], channel: str) -> list[dict[str, Any]]:
    return [p for c, p in notes if c == channel and p["kind"] == "turn"]


def test_each_turn_is_handed_over_with_what_was_said(sql: Conn) -> None:
    meeting = setup_meeting(sql, ["host", "a", "b"])
    ch = listen(sql, "host", "a", "b")
    sql.execute("SELECT amp.listen(ARRAY[amp.meeting_channel(%s)])", (meeting,))
    sql.execute("SELECT amp.start_meeting('host', %s, '{\"t\": \"agenda\"}')", (meeting,))
    notes = heard(sql)
    (first,) = turns(notes, ch["a"])
    assert first["meeting_id"] == str(meeting)
    # a never spoke: everything said so far (the joins, the opening)
    assert said(first)[-1] == ("host", "agenda")
    assert [s for s, _ in said(first)[:-1]] == [None, None, None]  # system: joined
    # the hint to the speaker comes before the meeting's own (a waiter hears its
    # turn with its content first); the meeting's hint carries no content
    kinds = [p["kind"] for _, p in notes]
    assert kinds.index("turn") < kinds.index("meeting")
    assert all("messages" not in p for c, p in notes if c != ch["a"])

    speak(sql, "a", meeting, "a1")
    speak(sql, "b", meeting, "b1")
    notes = heard(sql)
    (hint,) = turns(notes, ch["b"])  # b never spoke either
    assert said(hint) == [*said(first)[:-1], ("host", "agenda"), ("a", "a1")]
    # the host's last message (the opening) comes first, then what the others said
    assert [said(h) for h in turns(notes, ch["host"])] == [
        [("host", "agenda"), ("a", "a1"), ("b", "b1")]
    ]
    assert turns(notes, ch["a"]) == []

    # a speaker naming itself hears its own turn at once, with its own message
    speak(sql, "host", meeting, "h1", "host")
    assert [said(h) for h in turns(heard(sql), ch["host"])] == [[("host", "h1")]]


def test_a_large_history_is_not_carried(sql: Conn) -> None:
    meeting = setup_meeting(sql, ["host", "a"])
    ch = listen(sql, "host", "a")
    sql.execute("SELECT amp.start_meeting('host', %s, '{\"t\": \"go\"}')", (meeting,))
    heard(sql)
    # too large to travel: as stored (incompressible), or once written out
    # (compressible: stored small)
    for text in (os.urandom(3300).hex(), "x" * 7900):
        speak(sql, "a", meeting, text)
        (hint,) = turns(heard(sql), ch["host"])
        assert hint == {"kind": "turn", "meeting_id": str(meeting)}
        speak(sql, "host", meeting, "next")
    speak(sql, "a", meeting, "back")
    heard(sql)
    for i in range(21):
        speak(sql, "host", meeting, f"h{i}")
        speak(sql, "a", meeting, f"a{i}")
    hints = turns(heard(sql), ch["host"])
    assert [said(h) for h in hints] == [[("host", f"h{i}"), ("a", f"a{i}")] for i in range(21)]
    # a keeps the turn (it names itself): ten messages since the host last spoke travel
    # (its own included), forty do not
    for count, carried in ((9, 10), (39, 0)):
        speak(sql, "host", meeting, "h")
        for i in range(count):
            speak(sql, "a", meeting, f"a{i}", "a" if i < count - 1 else "host")
        (hint,) = turns(heard(sql), ch["host"])
        assert len(hint.get("messages", [])) == carried


def test_expiry_leave_and_late_speak_hand_over(sql: Conn) -> None:
    meeting = setup_meeting(sql, ["host", "a", "b", "c"])
    ch = listen(sql, "host", "a", "b", "c")
    sql.execute("SELECT amp.start_meeting('host', %s, '{\"t\": \"go\"}', 'a')", (meeting,))
    heard(sql)
    overdue = "UPDATE amp.meetings SET turn_deadline = now() - interval '1 second' WHERE id = %s"

    # a sweeper expires a's turn: b hears its turn, with the timeout
    sql.execute(overdue, (meeting,))
    assert sql.execute("SELECT amp.expire_turns()").fetchone() == (1,)
    (hint,) = turns(heard(sql), ch["b"])
    assert said(hint)[-1] == (None, "system")
    assert json.loads(hint["messages"][-1]["content"])["event"] == "agent_timed_out"

    # b's turn is overdue when a speaks late: b's turn expires inside amp.speak, and c
    # hears its turn once, at the end, with a's late message in it
    sql.execute(overdue, (meeting,))
    speak(sql, "a", meeting, "late")
    notes = heard(sql)
    assert [p["kind"] for c, p in notes if c in ch.values()] == ["turn"]
    (hint,) = turns(notes, ch["c"])
    assert [m["is_late"] for m in hint["messages"]][-1] is True
    assert said(hint)[-1] == ("a", "late")

    # the speaker leaves: the next one hears its turn
    sql.execute("SELECT amp.leave_meeting('c', %s)", (meeting,))
    (hint,) = turns(heard(sql), ch["host"])
    assert json.loads(hint["messages"][-1]["content"])["event"] == "agent_left"

    # the speaker whose overdue turn is expired by its own speak speaks on time
    # after all when the turn comes round to it again: no hint to itself
    speak(sql, "host", meeting, "h1")  # -> a
    heard(sql)
    sql.execute(overdue, (meeting,))
    speak(sql, "b", meeting, "b-late")  # a's turn expires: b's, and b speaks in it
    notes = heard(sql)
    assert turns(notes, ch["b"]) == []
    (hint,) = turns(notes, ch["host"])
    assert said(hint)[-2:] == [(None, "system"), ("b", "b-late")]
    assert hint["messages"][-1]["is_late"] is False


def test_no_content_travels_where_the_database_keeps_it_out(sql: Conn) -> None:
    meeting = setup_meeting(sql, ["host", "a", "b"])
    ch = listen(sql, "host", "a", "b")
    sql.execute("SET amp.notify_content = off")  # as ALTER DATABASE ... SET would
    sql.execute("SELECT amp.start_meeting('host', %s, '{\"t\": \"go\"}')", (meeting,))
    speak(sql, "a", meeting, "a1")
    sql.execute(
        "UPDATE amp.meetings SET turn_deadline = now() - interval '1 second' WHERE id = %s",
        (meeting,),
    )
    assert sql.execute("SELECT amp.expire_turns()").fetchone() == (1,)
    notes = heard(sql)
    hints = [turns(notes, ch[n]) for n in ("a", "b", "host")]
    only = {"kind": "turn", "meeting_id": str(meeting)}
    assert hints == [[only], [only], [only]]  # start, speak, expiry


# -- the SDK ------------------------------------------------------------------------


async def test_the_woken_speaker_reads_nothing_back(sdk: SDK) -> None:
    await sdk.register_organization("org")
    names = ["host", "a", "b"]
    for name in names:
        await sdk.register_agent(name, "org")
    meeting = await sdk.meeting.create_meeting("host", names, turn_duration=60)
    reads: dict[str, int] = dict.fromkeys(names, 0)
    fetch_one = sdk.db.fetch_one

    async def counting(query: str, params: list[Any], **kwargs: Any) -> Any:
        row = await fetch_one(query, params, **kwargs)
        if query == queries.MEETING_TURN and not row["meeting_ended"]:
            reads[params[0]] += 1
        return row

    sdk.db.fetch_one = counting  # type: ignore[method-assign,assignment]
    heard: dict[str, list[list[tuple[str | None, Any]]]] = {n: [] for n in names}

    async def participant(name: str, rounds: int) -> None:
        signal = await sdk.meeting.attend_meeting(name, meeting, timeout=WAIT)
        while not signal.meeting_ended:
            assert signal.your_turn and signal.current_speaker_external_id == name
            heard[name].append(
                [(m.sender_external_id, m.content) for m in signal.messages if not m.system]
            )
            if name == "host" and len(heard[name]) > rounds:
                await sdk.meeting.end_meeting(name, meeting)
                return
            text: dict[str, object] = {"t": f"{name}{len(heard[name])}"}
            signal = await sdk.meeting.speak(name, meeting, text, timeout=WAIT)

    guests = [asyncio.create_task(participant(n, 0)) for n in names[1:]]
    await sdk.meeting.wait_until_ready(meeting, timeout=WAIT)
    await sdk.meeting.start_meeting("host", meeting, {"t": "host0"})
    await asyncio.wait_for(asyncio.gather(participant("host", 4), *guests), WAIT)
    # each agent read its turn once, when it began to wait (an attend's wait); every
    # turn after that came in its hint: given after that read, or after its speak
    assert reads == dict.fromkeys(names, 1)
    # every signal has what the others said since the agent last spoke, in order
    assert heard["host"] == [[("a", {"t": f"a{i}"}), ("b", {"t": f"b{i}"})] for i in range(1, 6)]
    assert heard["a"] == [
        [("host", {"t": "host0"})],
        *([("b", {"t": f"b{i}"}), ("host", {"t": f"host{i}"})] for i in range(1, 5)),
    ]
    assert heard["b"] == [
        [("host", {"t": f"host{i}"}), ("a", {"t": f"a{i + 1}"})] for i in range(5)
    ]


def _hint(meeting: UUID, *ids: str) -> TurnGiven:
    payload = {
        "kind": "turn",
        "meeting_id": str(meeting),
        "messages": [
            {
                "seq": i,
                "message_id": m,
                "message_type": "meeting",
                "sender_external_id": "x",
                "content": "{}",
                "is_late": False,
                "created_at": "2026-01-01T00:00:00+00:00",
            }
            for i, m in enumerate(ids)
        ],
    }
    note = parse(json.dumps(payload))
    assert isinstance(note, TurnGiven)
    return note


def test_only_a_hint_newer_than_the_speak_is_taken() -> None:
    meeting = UUID(int=1)
    turn = _Turn("a", str(meeting))
    stale = _hint(meeting, "m1", "m2")  # given before a spoke: a's message is not in it
    fresh = _hint(meeting, "m2", "mine", "m3")
    other = _hint(UUID(int=2), "mine")
    assert turn.wanted(stale) and turn.wanted(fresh)
    assert not turn.wanted(other)
    # before the speak has answered, nothing is known to be newer: read
    assert turn.take_carried() is None
    assert turn.wanted(stale) and turn.wanted(fresh)
    turn.spoke = "mine"
    carried = turn.take_carried()
    assert carried is not None and [m["message_id"] for m in carried] == ["m2", "mine", "m3"]
    assert turn.wanted(stale)
    assert turn.take_carried() is None  # a stale hint only wakes the wait: it reads
    # a wait that read nothing (an attend's) takes no hint at all
    attend = _Turn("a", str(meeting))
    assert attend.wanted(fresh) and attend.take_carried() is None


def test_a_hint_newer_than_the_last_read_is_taken() -> None:
    meeting = UUID(int=1)
    turn = _Turn("a", str(meeting))
    before = _hint(meeting, "m1", "m2")  # seqs 0, 1
    after = _hint(meeting, "m1", "m2", "m3")  # seqs 0, 1, 2
    assert turn.wanted(before) and turn.wanted(after)
    turn.read_seq = 1  # the read saw m2: a turn given before it, and m3: after it
    carried = turn.take_carried()
    assert carried is not None and [m["message_id"] for m in carried] == ["m1", "m2", "m3"]
    assert turn.wanted(before)
    assert turn.take_carried() is None


def test_a_turn_named_during_the_first_read_is_not_lost() -> None:
    meeting = UUID(int=1)
    turn = _Turn("a", str(meeting))
    me = UUID(int=7)
    hint = MeetingChanged(kind="meeting", meeting_id=meeting, status="active", speaker_id=me)
    # the hint comes while the first read is under way: the agent's id is not known
    assert not turn.wanted(hint)
    assert turn.speakers == {str(me)}
    turn.agent_id = str(me)
    assert turn.wanted(hint)


def test_the_end_always_wakes() -> None:
    turn = _Turn("a", str(UUID(int=1)))
    assert turn.wanted(MeetingChanged(kind="meeting", meeting_id=UUID(int=1), status="ended"))
