"""(b) Upgrade from the last release with live data, in the style of pgmq's upgrade test.

A database is migrated to the head revision of the last release (its revision files
are frozen in the tree, so no checkout is needed), filled with live state through
that release's SQL API (pending deliveries, an unread inbox, a sync conversation
waiting for its reply, an active meeting), upgraded to HEAD, and then the SDK of HEAD
works through that state: handlers get the pending messages and answer the waiting
request, the meeting goes on and ends, new traffic flows. Finally the upgraded
catalog must equal sql/'s. A delta that forgets part of a change (a column a
function uses, say) fails here, on the data, not in production.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any
from uuid import UUID

import psycopg

from agent_messaging import AgentMessaging, MessageContext, migrations

from .helpers import REPO, make_config
from .schema_helpers import apply_sql_dir, catalog, catalog_difference


def last_release_head() -> str:
    """Where users come from: the last release's head (the baseline before any)."""
    return (
        list(migrations.RELEASES.values())[-1]
        if migrations.RELEASES
        else (migrations.BASELINE_REVISION)
    )


def seed_live_data(dsn: str) -> dict[str, Any]:
    """Live state made with the SQL API of the last release (update these calls when
    a new release changes them: they must be what that release's clients call)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT amp.register_organization('org1', 'Org One')")
        for name in ("alice", "bob", "carol", "dave"):
            conn.execute("SELECT amp.register_agent(%s, 'org1', %s)", (name, name.title()))
        notes = [
            conn.execute(
                "SELECT amp.send_one_way('alice', 'bob', %s::jsonb)", (f'{{"n": {n}}}',)
            ).fetchone()[0]
            for n in range(3)
        ]
        for n in range(2):
            conn.execute("SELECT amp.async_send('carol', 'dave', %s::jsonb)", (f'{{"i": {n}}}',))
        session, request = conn.execute(
            "SELECT * FROM amp.sync_send('alice', 'carol', '{\"q\": \"ready?\"}')"
        ).fetchone()
        meeting = conn.execute(
            "SELECT amp.create_meeting('alice', ARRAY['bob', 'carol'])"
        ).fetchone()[0]
        for name in ("bob", "carol"):
            conn.execute("SELECT amp.attend_meeting(%s, %s)", (name, meeting))
        conn.execute("SELECT amp.start_meeting('alice', %s, '{\"text\": \"welcome\"}')", (meeting,))
        state = conn.execute(
            "SELECT (SELECT count(*) FROM amp.messages WHERE delivery_status = 'pending'),"
            " (SELECT status FROM amp.sessions WHERE id = %s),"
            " (SELECT status FROM amp.meetings WHERE id = %s)",
            (session, meeting),
        ).fetchone()
    # 3 notes, the sync request, 2 invitations
    assert state == (6, "waiting", "active"), state
    return {"notes": notes, "session": session, "request": request, "meeting": meeting}


async def smoke(dsn: str, seeded: dict[str, Any]) -> None:
    """The SDK of HEAD takes over the state made before the upgrade."""
    inbox: dict[str, asyncio.Queue[tuple[str, Any]]] = {
        "bob": asyncio.Queue(),
        "carol": asyncio.Queue(),
    }

    async def take(name: str, count: int) -> list[tuple[str, Any]]:
        return [await asyncio.wait_for(inbox[name].get(), 60) for _ in range(count)]

    def handler(name: str) -> Any:
        async def handle(message: Any, context: MessageContext) -> Any:
            inbox[name].put_nowait((context.message_type, message))
            return {"a": f"{name} is ready"} if context.requires_reply else None

        return handle

    async with AgentMessaging[Any](make_config(dsn)) as sdk:
        # listen -> check -> wait -> re-check for the answer to the waiting request
        replied = asyncio.Event()

        def on_alice(_: str, note: Any) -> None:
            if getattr(note, "message_type", None) == "sync_reply":
                replied.set()

        await sdk.dispatcher.subscribe([await sdk.agent_channel("alice")], on_alice)

        async def reply_to_request() -> list[str]:
            rows = await sdk.db.fetch(
                "SELECT content::text AS c FROM amp.messages WHERE reply_to = $1::text::uuid",
                [str(seeded["request"])],
            )
            return [r["c"] for r in rows]

        sdk.register_handler("bob")(handler("bob"))
        sdk.register_handler("carol")(handler("carol"))
        await asyncio.wait_for(sdk.serve_handlers(), 60)
        # bob: the 3 notes and his invitation; carol: the waiting request and hers
        bob_got, carol_got = await take("bob", 4), await take("carol", 2)
        assert sorted(m["n"] for t, m in bob_got if t == "one_way") == [0, 1, 2]
        assert ("sync_request", {"q": "ready?"}) in carol_got
        assert [t for t, _ in bob_got + carol_got].count("meeting_invitation") == 2

        # the request that waited across the upgrade got its answer from the handler
        if not await reply_to_request():
            await asyncio.wait_for(replied.wait(), 60)
        assert await reply_to_request() == ['{"a": "carol is ready"}']

        # the inbox written before the upgrade is read after it
        unread = await sdk.async_conversation.get_unread_messages("dave")
        assert unread == [{"i": 0}, {"i": 1}]

        # the meeting goes on: bob has the turn, then carol, then the host ends it
        meeting = UUID(str(seeded["meeting"]))
        bob = asyncio.create_task(sdk.meeting.speak("bob", meeting, {"text": "hi"}, timeout=60))
        assert (await sdk.meeting.wait_for_turn("carol", meeting, timeout=60)).your_turn
        carol = asyncio.create_task(
            sdk.meeting.speak("carol", meeting, {"text": "hello"}, timeout=60)
        )
        assert (await sdk.meeting.wait_for_turn("alice", meeting, timeout=60)).your_turn
        await sdk.meeting.end_meeting("alice", meeting)
        assert (await bob).meeting_ended and (await carol).meeting_ended
        said = [m.content for m in await sdk.meeting.get_meeting_history(meeting)]
        assert {"text": "welcome"} in said and {"text": "hello"} in said

        # and new traffic flows
        answer = await sdk.sync_conversation.send_and_wait(
            "alice", "carol", {"q": "again?"}, timeout=60
        )
        assert answer == {"a": "carol is ready"}
        assert await take("carol", 1) == [("sync_request", {"q": "again?"})]
        await sdk.one_way.send("dave", "bob", {"n": 3})
        assert await take("bob", 1) == [("one_way", {"n": 3})]


def test_upgrade_from_last_release_with_live_data(empty_dsn: str, dsn: str) -> None:
    start = last_release_head()
    result = migrations.upgrade(empty_dsn, start)
    assert result.after == start
    seeded = seed_live_data(empty_dsn)

    result = migrations.upgrade(empty_dsn)
    assert result.before == start and result.after == migrations.head_revision()

    # the SDK of HEAD in its own process: a schema the functions do not match can
    # make calls fail in a loop, and a bounded child process keeps that a failure
    seeded_json = json.dumps(seeded, default=str)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.test_upgrade", empty_dsn, seeded_json],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise AssertionError(f"the smoke scenario hung; its stderr begins:\n{err[:4000]}") from None
    assert done.returncode == 0 and done.stdout.strip() == "smoke ok", done.stderr[-6000:]

    # the upgraded schema is sql/'s (built here in the other database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA amp CASCADE")
    apply_sql_dir(dsn)
    upgraded, direct = catalog(empty_dsn), catalog(dsn)
    assert upgraded == direct, "upgraded (left) vs sql/ (right):\n" + catalog_difference(
        upgraded, direct
    )


if __name__ == "__main__":  # python -m tests.test_upgrade DSN SEEDED_JSON
    asyncio.run(smoke(sys.argv[1], json.loads(sys.argv[2])))
    print("smoke ok")
