"""The meeting turn hand-off: the turn's hint to its new speaker, on that agent's own
channel, carries what was said since it last spoke.
"""

from __future__ import annotations

import json
import os
from typing import Any
from uuid import UUID

import psycopg

Conn = psycopg.Connection[tuple[object, ...]]


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
