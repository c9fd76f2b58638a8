"""Bad input gets a clear InvalidInputError (AM001 in SQL) and changes nothing.

Each case is checked through the SDK and, where SQL callers can send it, through
plain SQL too: the SDK and the server apply the same rules.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg
import pytest

from agent_messaging import AgentMessaging, InvalidInputError

from .helpers import make_config

SDK = AgentMessaging[Any]
Conn = psycopg.Connection[tuple[object, ...]]


def counts(sql: Conn) -> tuple[object, ...]:
    """Rows of every table a refused call could have touched."""
    row = sql.execute(
        "SELECT (SELECT count(*) FROM amp.messages), (SELECT count(*) FROM amp.sessions), "
        "(SELECT count(*) FROM amp.meetings), (SELECT count(*) FROM amp.agents), "
        "(SELECT count(*) FROM amp.organizations), (SELECT count(*) FROM amp.workers), "
        "(SELECT count(*) FROM amp.messages WHERE read_at IS NOT NULL)"
    ).fetchone()
    assert row is not None
    return row


def sql_error(sql: Conn, statement: str, *params: object, code: str = "AM001") -> str:
    """The message of a statement that must be refused with ``code``."""
    with pytest.raises(psycopg.Error) as failure:
        sql.execute(statement, list(params) or None)
    assert failure.value.sqlstate == code, failure.value
    return str(failure.value.diag.message_primary)


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# -- content psqlpy cannot decode is refused at the door (#11.2, #11.11) ----------


async def test_nesting_limit_is_the_same_for_the_sdk_and_sql(trio: SDK, sql: Conn) -> None:
    before = counts(sql)
    for send in (trio.one_way.send, trio.async_conversation.send):
        with pytest.raises(InvalidInputError, match="deeper than the limit of 100 levels"):
            await send("alice", "bob", nested(101))
        with pytest.raises(InvalidInputError, match="metadata nests arrays/objects deeper"):
            await send("alice", "bob", 1, {"m": nested(100)})
    message = sql_error(
        sql, "SELECT amp.send_one_way('alice', 'bob', %s::jsonb)", "[" * 101 + "]" * 101
    )
    assert message == "message content nests arrays/objects deeper than the limit of 100 levels"
    assert counts(sql) == before
    # 100 levels is fine, and comes back as it went
    await trio.async_conversation.send("alice", "bob", nested(100))
    assert await trio.async_conversation.get_unread_messages("bob") == [nested(100)]


async def test_numbers_beyond_a_double_are_refused(trio: SDK, sql: Conn) -> None:
    before = counts(sql)
    for number in (10**309, -(10**309), 1.5e308, -1.0000001e308):
        with pytest.raises(InvalidInputError, match=r"number beyond \+-1e308"):
            await trio.one_way.send("alice", "bob", {"x": [number]})
    assert "number beyond +-1e308" in sql_error(
        sql, "SELECT amp.async_send('alice', 'bob', '[1, 2e308]')"
    )
    assert counts(sql) == before
    # what the SDK reads back is exact: big integers stay integers (psqlpy made
    # floats of them); an integral float written with an exponent is stored by
    # PostgreSQL as the integer it equals, and comes back as that int
    values = [2**64 + 1, -(10**300), 0.1, 5e-324, 1.5, 2.0]
    await trio.async_conversation.send("alice", "bob", [*values, 1e308, -1e308])
    [got] = await trio.async_conversation.get_unread_messages("bob")
    assert got[:6] == values and [type(v) for v in got[:6]] == [type(v) for v in values]
    assert got[6:] == [10**308, -(10**308)] and [float(v) for v in got[6:]] == [1e308, -1e308]


async def test_nan_infinity_and_nul_are_refused_not_changed(trio: SDK, sql: Conn) -> None:
    before = counts(sql)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(InvalidInputError, match="JSON cannot carry"):
            await trio.one_way.send("alice", "bob", {"x": [1, bad]})
        with pytest.raises(InvalidInputError, match="metadata contains"):
            await trio.async_conversation.send("alice", "bob", 1, {"x": bad})
    with pytest.raises(InvalidInputError, match="NUL character"):
        await trio.async_conversation.send("alice", "bob", "a\x00b")
    with pytest.raises(InvalidInputError, match="NUL character"):
        await trio.async_conversation.send("alice", "bob", "x", {"k": "\x00"})
    assert counts(sql)[:2] == before[:2]
    # a null that was meant is kept, and an escaped backslash-u0000 is just text
    await trio.async_conversation.send("alice", "bob", {"x": None, "y": "\\u0000"})
    assert await trio.async_conversation.get_unread_messages("bob") == [{"x": None, "y": "\\u0000"}]


# -- ids (#11.10) -------------------------------------------------------------------


async def test_external_id_rules(sdk: AgentMessaging[Any], sql: Conn) -> None:
    before = counts(sql)
    cases = {
        "x" * 256: "is 256 characters, more than the limit of 255",
        " alice": "starts or ends with whitespace",
        "alice\u3000": "starts or ends with whitespace",
        "al\x1bice": "contains a control character",
        "al\x00ice": "contains a control character",
        "": "must not be empty",
    }
    for bad, message in cases.items():
        with pytest.raises(InvalidInputError, match=message):
            await sdk.register_organization(bad)
        with pytest.raises(InvalidInputError, match=message):
            await sdk.get_agent(bad)
        if "\x00" not in bad:  # NUL cannot even be sent to PostgreSQL
            assert message in sql_error(sql, "SELECT amp.register_organization(%s)", bad)
    with pytest.raises(InvalidInputError, match="name contains a NUL"):
        await sdk.register_organization("org", "a\x00b")
    with pytest.raises(InvalidInputError, match="name is 1001 characters"):
        await sdk.register_organization("org", "n" * 1001)
    assert "name is 1001 characters" in sql_error(
        sql, "SELECT amp.register_organization('org', repeat('n', 1001))"
    )
    assert counts(sql) == before
    # no normalisation: these are three different agents
    await sdk.register_organization("org")
    for name in ("alice", "Alice", "\u0430lice"):  # the last starts with a Cyrillic a
        await sdk.register_agent(name, "org")
    assert (await sdk.get_agent("Alice")).external_id == "Alice"
    assert counts(sql)[3] == 3
    # the longest allowed id works end to end
    longest = "a" * 255
    await sdk.register_agent(longest, "org")
    await sdk.async_conversation.send(longest, "alice", {"hi": 1})
    assert await sdk.async_conversation.get_unread_messages("alice") == [{"hi": 1}]


async def test_ids_with_nul_in_every_call_are_invalid_input(trio: SDK, sql: Conn) -> None:
    before = counts(sql)
    bad = "bo\x00b"
    calls = [
        trio.one_way.send("alice", bad, 1),
        trio.one_way.send(bad, "bob", 1),
        trio.async_conversation.send("alice", bad, 1),
        trio.async_conversation.get_unread_messages(bad),
        trio.async_conversation.wait_for_message("alice", bad, timeout=0),
        trio.sync_conversation.send_and_wait("alice", bad, 1, timeout=1),
        trio.meeting.create_meeting("alice", ["carol", bad]),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError):
            await call
    assert counts(sql) == before


def test_null_arguments_are_named(sql: Conn) -> None:
    sql.execute("SELECT amp.register_organization('o')")
    sql.execute("SELECT amp.register_agent('a', 'o')")
    worker = sql.execute("SELECT amp.register_worker('h', 1)").fetchone()
    assert worker is not None
    before = counts(sql)
    expected = {
        "SELECT amp.serve_agents(NULL, ARRAY['a'])": "worker id (p_worker) must not be null",
        "SELECT amp.serve_agents(%s, NULL)": "agents (p_agents) must not be null",
        "SELECT amp.serve_agents(%s, ARRAY[NULL])": "agent external id must not be empty",
        "SELECT amp.register_worker(NULL, 1)": "worker hostname (p_hostname) must not be null",
        "SELECT amp.register_worker('h', NULL)": "worker pid (p_pid) must not be null",
        "SELECT amp.listen(NULL)": "channels (p_channels) must not be or contain NULL",
        "SELECT amp.listen(ARRAY['x', NULL])": "channels (p_channels) must not be or contain NULL",
        "SELECT amp.unlisten(NULL)": "channels (p_channels) must not be or contain NULL",
        "SELECT amp.fail_delivery(NULL, gen_random_uuid(), 'e', '1 s', 3)": "(p_worker)",
        "SELECT amp.fail_delivery(%s, NULL, 'e', '1 s', 3)": "message id (p_message_id)",
        "SELECT amp.fail_delivery(%s, gen_random_uuid(), 'e', NULL, 3)": "(p_retry_in)",
        "SELECT amp.fail_delivery(%s, gen_random_uuid(), 'e', '1 s', NULL)": "(p_max_attempts)",
    }
    for statement, message in expected.items():
        params = [worker[0]] if "%s" in statement else []
        assert message in sql_error(sql, statement, *params), statement
    assert counts(sql) == before


# -- timeouts and turn durations (#11.3) ------------------------------------------


async def test_bad_timeouts_are_refused(trio: SDK, sql: Conn) -> None:
    meeting = await trio.meeting.create_meeting("alice", ["alice", "bob"], turn_duration=None)
    before = counts(sql)
    for bad in (math.nan, math.inf, -math.inf, -1, "5", True):
        calls = [
            trio.sync_conversation.send_and_wait("alice", "bob", 1, timeout=bad),
            trio.async_conversation.wait_for_message("bob", "alice", timeout=bad),
            trio.meeting.attend_meeting("bob", meeting, timeout=bad),
            trio.meeting.speak("alice", meeting, "x", timeout=bad),
            trio.meeting.wait_for_turn("alice", meeting, timeout=bad),
            trio.meeting.wait_until_ready(meeting, timeout=bad),
        ]
        for call in calls:
            with pytest.raises(InvalidInputError, match="timeout must be"):
                await call
    assert counts(sql) == before
    # bob did not attend: his participant row is untouched
    status = await trio.meeting.get_meeting_status(meeting)
    assert [p.status for p in status.participants] == ["attending", "invited"]


async def test_bad_turn_durations_are_refused(trio: SDK, sql: Conn) -> None:
    before = counts(sql)
    for bad in (math.nan, math.inf, -1, 0, 31_536_001, "60"):
        with pytest.raises(InvalidInputError, match="turn_duration must be"):
            await trio.meeting.create_meeting("alice", ["bob"], turn_duration=bad)
    # the server's limit: one week by default (amp.settings)
    with pytest.raises(InvalidInputError, match="longer than the limit of 604800 seconds"):
        await trio.meeting.create_meeting("alice", ["bob"], turn_duration=604_801)
    assert counts(sql) == before
    assert "turn duration must be positive" in sql_error(
        sql, "SELECT amp.create_meeting('alice', ARRAY['bob'], interval '-1 s')", code="AM046"
    )
    assert "longer than the limit of 604800 seconds" in sql_error(
        sql, "SELECT amp.create_meeting('alice', ARRAY['bob'], interval '8 days')"
    )
    meeting = await trio.meeting.create_meeting("alice", ["bob"], turn_duration=604_800)
    status = await trio.meeting.get_meeting_status(meeting)
    assert status.turn_duration == 604_800


# -- limits from amp.settings (#11.8) ---------------------------------------------


async def test_content_and_metadata_count_together(trio: SDK, sql: Conn) -> None:
    sql.execute("INSERT INTO amp.settings (key, value) VALUES ('max_message_bytes', '1000')")
    before = counts(sql)
    with pytest.raises(InvalidInputError, match="content and metadata are 1211 bytes"):
        await trio.async_conversation.send("alice", "bob", "x" * 600, {"m": "y" * 600})
    assert "more than the limit of 1000" in sql_error(
        sql,
        "SELECT amp.send_one_way('alice', 'bob', '1', jsonb_build_object('m', repeat('y', 2000)))",
    )
    assert counts(sql) == before
    async with AgentMessaging[Any](make_config(trio.db.dsn, max_message_bytes=100)) as small:
        with pytest.raises(InvalidInputError, match="content and metadata are"):
            await small.one_way.send("alice", "bob", "x" * 50, {"m": "y" * 50})
    assert counts(sql) == before


def test_settings_refuse_bad_values_and_fall_back_when_broken(sql: Conn) -> None:
    sql.execute("SELECT amp.register_organization('o')")
    sql.execute("SELECT amp.register_agent('a', 'o'), amp.register_agent('b', 'o')")
    assert "must be an integer from 64 to 268435455, not 'lots'" in sql_error(
        sql, "INSERT INTO amp.settings VALUES ('max_message_bytes', 'lots')"
    )
    assert "unknown amp setting 'max_content_bytes'" in sql_error(
        sql, "INSERT INTO amp.settings VALUES ('max_content_bytes', '10')"
    )
    # a malformed value that got in anyway (trigger bypassed) never breaks a send
    sql.execute("ALTER TABLE amp.settings DISABLE TRIGGER settings_check")
    sql.execute("INSERT INTO amp.settings VALUES ('max_message_bytes', 'lots')")
    sql.execute("ALTER TABLE amp.settings ENABLE TRIGGER settings_check")
    notices: list[str] = []
    sql.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
    sql.execute("SELECT amp.send_one_way('a', 'b', '\"still works\"')")
    assert any("max_message_bytes = 'lots'" in n and "using the default" in n for n in notices)
    row = sql.execute(
        "SELECT value, source FROM amp.effective_settings() WHERE key = 'max_message_bytes'"
    ).fetchone()
    assert row == (1048576, "invalid in amp.settings: default used")


async def test_invitations_stay_small_whatever_the_meeting(trio: SDK, sql: Conn) -> None:
    for i in range(100):
        await trio.register_agent(f"guest{i}", "org1")
    guests = [f"guest{i}" for i in range(100)]
    metadata = '{"brief": "' + "b" * 100_000 + '"}'
    meeting = sql.execute(
        "SELECT amp.create_meeting('alice', %s, NULL, %s::jsonb)", [guests, metadata]
    ).fetchone()
    assert meeting is not None
    row = sql.execute(
        "SELECT count(*), max(octet_length(content::text) + octet_length(metadata::text)) "
        "FROM amp.messages WHERE message_type = 'meeting_invitation'"
    ).fetchone()
    assert row is not None and row[0] == 100
    assert isinstance(row[1], int) and row[1] < 300
    stored = sql.execute(
        "SELECT octet_length(metadata::text) FROM amp.meeting_status(%s)", [meeting[0]]
    ).fetchone()
    assert stored is not None and isinstance(stored[0], int) and stored[0] > 100_000
    # the metadata counts against the message limit like any message's
    sql.execute("INSERT INTO amp.settings VALUES ('max_message_bytes', '1000')")
    assert "more than the limit of 1000" in sql_error(
        sql, "SELECT amp.create_meeting('alice', ARRAY['bob'], NULL, %s::jsonb)", metadata
    )
